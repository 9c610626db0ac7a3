"""The policy's chat templates, and how one OpenRLHF sample's text splits into (question, response).

OpenRLHF hands the reward code `queries` (the policy-tokenizer decode of prompt + response, special tokens kept,
prompt possibly left-truncated) and `prompts` (the templated prompt string). The response is the text after the
prompt inside the query, cut at the template's end-of-turn marker; the question is the last user message of the
(untruncated) prompt.
"""

import json

# Chat-template markers: where the assistant turn starts, where a user turn starts, what ends a turn. The policy's
# special tokens are kept in the query, so these strings appear verbatim. "auto" picks the first whose assistant
# marker occurs in the prompt; a JSON object {"assistant": ..., "user": ..., "end": [...]} defines another template.
TEMPLATES = {
    "chatml": {  # ChatML: SmolLM2, Qwen2
        "assistant": "<|im_start|>assistant\n",
        "user": "<|im_start|>user\n",
        "end": ["<|im_end|>", "<|endoftext|>"],
    },
    "llama3": {
        "assistant": "<|start_header_id|>assistant<|end_header_id|>\n\n",
        "user": "<|start_header_id|>user<|end_header_id|>\n\n",
        "end": ["<|eot_id|>", "<|end_of_text|>", "<|eom_id|>"],
    },
}
DEFAULT_TEMPLATE = "auto"


def resolve_template(template) -> dict | str:
    """A template name, "auto", a dict, or a JSON object string -> "auto" or a dict with assistant/user/end."""
    if isinstance(template, str) and template.lstrip().startswith("{"):
        template = json.loads(template)
    if isinstance(template, dict):
        if not isinstance(template.get("assistant"), str) or not template["assistant"]:
            raise ValueError(f"a custom template needs a non-empty 'assistant' marker, got {template!r}")
        end = template.get("end", [])
        if not isinstance(end, list) or not all(isinstance(e, str) and e for e in end):
            raise ValueError(f"template 'end' must be a list of non-empty strings, got {end!r}")
        return {"assistant": template["assistant"], "user": template.get("user") or "", "end": end}
    if template == "auto":
        return "auto"
    if template not in TEMPLATES:
        raise ValueError(f"unknown chat template {template!r}: expected auto, {', '.join(TEMPLATES)} or a JSON object")
    return TEMPLATES[template]


def split_query(query: str, prompt: str, template="auto") -> tuple[str, str]:
    """(question, response) of one OpenRLHF sample. Raises ValueError naming what was not found."""
    if not isinstance(query, str) or not isinstance(prompt, str):
        raise ValueError(f"query and prompt must be strings, got {type(query).__name__} and {type(prompt).__name__}")
    template = resolve_template(template)
    if template == "auto":
        template = next((t for t in TEMPLATES.values() if t["assistant"] in prompt), None)
        if template is None:
            raise ValueError(
                f"no known assistant marker in the prompt (templates: {', '.join(TEMPLATES)}); set --moslim.template "
                f"for this policy (a name or a JSON object with its markers). Prompt end: {prompt[-120:]!r}"
            )
    marker = template["assistant"]
    gen_start = prompt.rfind(marker)
    if gen_start < 0:
        raise ValueError(f"the prompt has no assistant marker {marker!r}: {prompt[-120:]!r}")
    # The query starts with a suffix of the prompt (OpenRLHF truncates prompts from the left), so the response starts
    # right after an occurrence of the prompt's generation tail whose text up to there is a suffix of the prompt. The
    # LAST such occurrence: a query truncated to start at an earlier assistant turn also matches its first one. A few
    # leading characters may differ when truncation split a multi-byte character.
    tail = prompt[gen_start:]
    response_start, pos = None, query.find(tail)
    while pos >= 0:
        end = pos + len(tail)
        if any(prompt.endswith(query[skip:end]) for skip in range(min(4, end) + 1)):
            response_start = end
        pos = query.find(tail, pos + 1)
    if response_start is None:
        raise ValueError(f"the query does not contain the end of its prompt {tail!r}: query starts {query[:120]!r}")
    response = query[response_start:]
    for end_marker in template["end"]:
        response = response.split(end_marker, 1)[0]
    # The last user turn of the untruncated prompt; without a user marker, everything before the generation tail.
    user = template["user"]
    user_start = prompt.rfind(user, 0, gen_start) if user else -1
    question = prompt[user_start + len(user) : gen_start] if user_start >= 0 else prompt[:gen_start]
    for end_marker in template["end"]:
        question = question.split(end_marker, 1)[0]
    return question.strip(), response.strip()
