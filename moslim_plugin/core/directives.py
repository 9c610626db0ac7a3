"""Preference directives: the text in the prompt that tells the policy which level of which objectives is wanted.

A request is a dict objective -> target level, any subset of the spec (empty allowed: "no preference"). Rendered::

    [Preferences] helpfulness: 3/4 (very helpful); verbosity: 1/4 (concise) [/Preferences]

`name: index/max` is what the parser reads; the parenthesis is the objective's phrasing (see spec.py), the part the
policy understands. The bracketed tags survive chat templates (ChatML `<|im_start|>system ...`) and tokenizer
round trips, so `parse_directive` works on a bare message, a system prompt or a whole templated prompt + response.
Only the FIRST directive in a text counts: ours always comes before any response text (and `apply_directive`
refuses messages that already carry one), so a policy that learns to echo the directive in its response cannot
rewrite its own request.

The same request travels in the OpenRLHF label column as canonical JSON (`request_to_label`), tied to the spec by
its fingerprint, so a dataset prepared for another spec is refused instead of being scored against the wrong heads.
"""

import json
import re
from numbers import Integral

from moslim_plugin import UserError
from moslim_plugin.core.spec import ObjectiveSpec

OPEN_TAG, CLOSE_TAG = "[Preferences]", "[/Preferences]"
NO_PREFERENCE = "no preference"
PLACEMENTS = ("system", "user_prefix", "user_suffix")
DEFAULT_PLACEMENT = "system"

# Tags case-insensitive: an uncased tokenizer (BERT) lowercases the text it decodes.
_DIRECTIVE_RE = re.compile(re.escape(OPEN_TAG) + r"(.*?)" + re.escape(CLOSE_TAG), re.IGNORECASE | re.DOTALL)
_ITEM_RE = re.compile(
    r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*:\s*(?P<index>[+-]?\d+)\s*/\s*(?P<max>\d+)(?:\s*\((?P<phrase>.*)\))?\Z"
)


class DirectiveError(UserError):
    """Missing or malformed directive, unknown objective, out-of-range level, or a label for another spec."""


def validate_request(spec: ObjectiveSpec, request) -> dict[str, int]:
    """Check a request against the spec; returns it as plain ints in spec order."""
    if not isinstance(request, dict):
        raise DirectiveError(f"a request must be a dict objective -> level, got {type(request).__name__}: {request!r}")
    for name, level in request.items():
        if name not in spec.names:
            raise DirectiveError(f"unknown objective {name!r} in request {request!r}; the spec has {list(spec.names)}")
        levels = spec.levels[spec.index(name)]
        if not isinstance(level, Integral) or isinstance(level, bool) or not 0 <= level < levels:
            raise DirectiveError(f"level {level!r} for {name!r} is out of range: expected an integer 0..{levels - 1}")
    return {name: int(request[name]) for name in spec.names if name in request}


def render_directive(spec: ObjectiveSpec, request) -> str:
    request = validate_request(spec, request)
    items = []
    for name, index in request.items():
        objective = spec.objectives[spec.index(name)]
        phrase = objective.phrase(index)
        items.append(f"{name}: {index}/{objective.levels - 1}" + (f" ({phrase})" if phrase else ""))
    return f"{OPEN_TAG} {'; '.join(items) or NO_PREFERENCE} {CLOSE_TAG}"


def parse_directive(spec: ObjectiveSpec, text: str) -> dict[str, int]:
    """The request of the first directive found anywhere in `text`."""
    if not isinstance(text, str):
        raise DirectiveError(f"expected the prompt text, got {type(text).__name__}: {text!r:.80}")
    match = _DIRECTIVE_RE.search(text)
    if match is None:
        hint = " (it has an opening tag but no closing tag)" if OPEN_TAG.lower() in text.lower() else ""
        raise DirectiveError(f"no {OPEN_TAG} ... {CLOSE_TAG} directive found in text{hint}: {text[:120]!r}")
    body = match.group(1).strip()
    if body.lower() == NO_PREFERENCE:
        return {}
    request = {}
    for item in body.split(";"):
        m = _ITEM_RE.match(item.strip())
        if m is None:
            raise DirectiveError(
                f"malformed directive item {item.strip()!r} in {match.group(0)!r}; expected 'name: level/max (phrase)'"
            )
        name, index, top = m.group("name"), int(m.group("index")), int(m.group("max"))
        if name not in spec.names:
            raise DirectiveError(f"unknown objective {name!r} in directive {match.group(0)!r}; the spec has "
                                 f"{list(spec.names)}")  # fmt: skip
        if name in request:
            raise DirectiveError(f"objective {name!r} appears twice in directive {match.group(0)!r}")
        levels = spec.levels[spec.index(name)]
        if top != levels - 1:
            raise DirectiveError(
                f"directive puts {name!r} on a 0..{top} scale, but the spec ({spec.source}) has 0..{levels - 1}"
            )
        if not 0 <= index < levels:
            raise DirectiveError(f"level {index} for {name!r} is out of range 0..{levels - 1} in {match.group(0)!r}")
        request[name] = index
    return validate_request(spec, request)


def check_label_matches_directive(spec: ObjectiveSpec, request: dict, text: str) -> None:
    """The directive the policy reads in `text` (a prompt, or chat messages' contents joined) must request exactly
    what the label asks the reward model to score; else the policy is rewarded for obeying an instruction it never
    saw. Reads `text` with `parse_directive`, so every directive style the parser knows is covered. An empty
    request is refused too: it scores a constant 0 for every response."""
    if not request:
        raise DirectiveError(
            "the label requests no objective (targets {}): every response would get the same reward; "
            "label at least one objective"
        )
    try:
        in_text = parse_directive(spec, text)
    except DirectiveError as e:
        raise DirectiveError(f"the label requests {request} but the prompt has no valid directive ({e})") from None
    if in_text != request:
        raise DirectiveError(f"the label requests {request} but the prompt's directive requests {in_text}")


def request_to_label(spec: ObjectiveSpec, request) -> str:
    """Canonical JSON label: `{"moslim":{"targets":{...},"spec":"<fingerprint>"}}`, spec order, no spaces."""
    targets = validate_request(spec, request)
    return json.dumps({"moslim": {"targets": targets, "spec": spec.fingerprint}}, separators=(",", ":"))


def label_to_request(spec: ObjectiveSpec, label) -> dict[str, int]:
    """Inverse of request_to_label; accepts the JSON string or the already-decoded dict."""
    if isinstance(label, str):
        try:
            label = json.loads(label)
        except json.JSONDecodeError as e:
            raise DirectiveError(f"label is not MOSLIM JSON ({e}): {label[:120]!r}") from None
    if not isinstance(label, dict) or set(label) != {"moslim"} or not isinstance(label["moslim"], dict):
        raise DirectiveError(f'expected a label {{"moslim": {{"targets": ..., "spec": ...}}}}, got {label!r:.120}')
    body = label["moslim"]
    if set(body) != {"targets", "spec"}:
        raise DirectiveError(
            f"label must have exactly the keys 'targets' and 'spec' under 'moslim', got {sorted(body)}"
        )
    if body["spec"] != spec.fingerprint:
        raise DirectiveError(
            f"label was made for spec fingerprint {body['spec']!r}, but this spec ({spec.source}) is "
            f"{spec.fingerprint!r}: prepare the prompts again with this spec"
        )
    targets = body["targets"]
    if isinstance(targets, dict):
        # A label column of dicts loaded through Arrow is unified into one struct type: objectives a row did not
        # request come back as None. None means "not requested", as the absent key did.
        targets = {name: level for name, level in targets.items() if level is not None}
    return validate_request(spec, targets)


def apply_directive(spec: ObjectiveSpec, request, prompt, placement: str = DEFAULT_PLACEMENT) -> list[dict]:
    """Chat messages with the directive in the system message (created or prepended), or before or after the text
    of the LAST user message (the one the response answers): `user_prefix` / `user_suffix`.

    `prompt` is the user message (str) or a list of `{"role", "content"}` messages; the input is not modified.
    `user_suffix` puts the directive right before the assistant turn, where a small policy attends most.
    """
    if placement not in PLACEMENTS:
        raise DirectiveError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages
    ):
        raise DirectiveError(
            f"prompt must be a str or a list of {{'role', 'content'}} str messages, got {prompt!r:.120}"
        )
    messages = [dict(m) for m in messages]
    for m in messages:
        if _DIRECTIVE_RE.search(m["content"]):
            raise DirectiveError(f"the {m['role']} message already carries a directive: {m['content'][:120]!r}")
    directive = render_directive(spec, request)
    if placement == "system":
        if messages and messages[0]["role"] == "system":
            messages[0]["content"] = f"{directive}\n\n{messages[0]['content']}".rstrip()
        else:
            messages.insert(0, {"role": "system", "content": directive})
    else:
        users = [i for i, m in enumerate(messages) if m["role"] == "user"]
        if not users:
            raise DirectiveError(
                f"placement {placement!r} needs a user message; roles: {[m['role'] for m in messages]}"
            )
        text = messages[users[-1]]["content"]
        parts = (directive, text) if placement == "user_prefix" else (text, directive)
        messages[users[-1]]["content"] = "\n\n".join(parts)
    return messages
