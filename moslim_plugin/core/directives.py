"""Preference directives: the text in the prompt that tells the policy which level of which objectives is wanted.

A request is a dict objective -> target level, any subset of the spec (empty allowed: "no preference"). Two styles:

    natural: Give a very useful answer. Answer briefly, in two or three sentences.
    tagged:  [Preferences] helpfulness: 3/4 (very helpful); verbosity: 1/4 (concise) [/Preferences]

`natural` (the default) joins the spec's per-level `instructions` sentences, in spec order, into one paragraph
(`NO_PREFERENCE_SENTENCE` for an empty request); the parser matches them back exactly. It is the default because
a small policy follows a plain sentence far better than a record: measured in docs/demo/screening.md.
`tagged`: `name: index/max` is what the parser reads; the parenthesis is the objective's phrasing (see spec.py).

`parse_directive` is the one entry point for both styles; it works on a bare message, a system prompt or a whole
templated prompt + response. A natural directive is a whole line (or paragraph) of spec sentences, so a question
that merely mentions one does not count. Only the FIRST directive in a text counts: ours always comes before any
response text (and `apply_directive` refuses messages that already carry one), so a policy that learns to echo the
directive in its response cannot rewrite its own request.

The same request travels in the OpenRLHF label column as canonical JSON (`request_to_label`), tied to the spec by
its fingerprint, so a dataset prepared for another spec is refused instead of being scored against the wrong heads.
"""

import json
import re
from numbers import Integral

from moslim_plugin import UserError
from moslim_plugin.core.spec import NO_PREFERENCE_SENTENCE, ObjectiveSpec

OPEN_TAG, CLOSE_TAG = "[Preferences]", "[/Preferences]"
NO_PREFERENCE = "no preference"
PLACEMENTS = ("system", "user_prefix", "user_suffix")
DEFAULT_PLACEMENT = "system"
STYLES = ("natural", "tagged")
DEFAULT_STYLE = "natural"

# Tags case-insensitive: an uncased tokenizer (BERT) lowercases the text it decodes.
_DIRECTIVE_RE = re.compile(re.escape(OPEN_TAG) + r"(.*?)" + re.escape(CLOSE_TAG), re.IGNORECASE | re.DOTALL)
_ITEM_RE = re.compile(
    r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*:\s*(?P<index>[+-]?\d+)\s*/\s*(?P<max>\d+)(?:\s*\((?P<phrase>.*)\))?\Z"
)


class DirectiveError(UserError):
    """Missing or malformed directive, unknown objective, out-of-range level, or a label for another spec."""


def validate_request(spec: ObjectiveSpec, request, masked_ok: bool = False) -> dict[str, int | None]:
    """Check a request against the spec; returns it as plain ints in spec order. With `masked_ok`, a level may be None:
    a rating row's labels, where None masks that head (no rating for that objective)."""
    if not isinstance(request, dict):
        raise DirectiveError(f"a request must be a dict objective -> level, got {type(request).__name__}: {request!r}")
    for name, level in request.items():
        if name not in spec.names:
            raise DirectiveError(f"unknown objective {name!r} in request {request!r}; the spec has {list(spec.names)}")
        levels = spec.levels[spec.index(name)]
        if level is None and masked_ok:
            continue
        if not isinstance(level, Integral) or isinstance(level, bool) or not 0 <= level < levels:
            raise DirectiveError(f"level {level!r} for {name!r} is out of range: expected an integer 0..{levels - 1}")
    return {name: None if request[name] is None else int(request[name]) for name in spec.names if name in request}


def render_directive(spec: ObjectiveSpec, request, style: str = DEFAULT_STYLE) -> str:
    request = validate_request(spec, request)
    if style not in STYLES:
        raise DirectiveError(f"directive style must be one of {STYLES}, got {style!r}")
    if style == "natural":
        missing = [o.name for o in spec.objectives if not o.instructions]
        if missing:
            raise DirectiveError(
                f"the natural directive style needs per-level 'instructions' sentences for every objective, but "
                f"{missing} in spec {spec.source} have none: add them to the spec or use the 'tagged' style"
            )
        sentences = [spec.objectives[spec.index(name)].instructions[index] for name, index in request.items()]
        return " ".join(sentences) or NO_PREFERENCE_SENTENCE
    items = []
    for name, index in request.items():
        objective = spec.objectives[spec.index(name)]
        phrase = objective.phrase(index)
        items.append(f"{name}: {index}/{objective.levels - 1}" + (f" ({phrase})" if phrase else ""))
    return f"{OPEN_TAG} {'; '.join(items) or NO_PREFERENCE} {CLOSE_TAG}"


def _natural_re(spec: ObjectiveSpec):
    """A whole line of instruction sentences separated by single spaces; None for a spec without instructions."""
    if not spec.has_instructions:
        return None
    sentences = [s for o in spec.objectives for s in o.instructions] + [NO_PREFERENCE_SENTENCE]
    one = "|".join(re.escape(s) for s in sorted(sentences, key=len, reverse=True))
    # Ends at the end of a line or at a chat-template token (`...<|im_end|>`).
    return re.compile(rf"^(?:{one})(?: (?:{one}))*(?=$|<)", re.MULTILINE), re.compile(one)


def parse_directive(spec: ObjectiveSpec, text: str, style: str | None = None) -> dict[str, int]:
    """The request of the first directive found anywhere in `text`, in either style (or only in `style`)."""
    if not isinstance(text, str):
        raise DirectiveError(f"expected the prompt text, got {type(text).__name__}: {text!r:.80}")
    if style not in (None, *STYLES):
        raise DirectiveError(f"directive style must be one of {STYLES} (or None: either), got {style!r}")
    tagged = _DIRECTIVE_RE.search(text) if style != "natural" else None
    patterns = _natural_re(spec) if style != "tagged" else None
    natural = patterns[0].search(text) if patterns else None
    if natural is not None and (tagged is None or natural.start() < tagged.start()):
        return _parse_natural(spec, natural.group(0), patterns[1])
    if tagged is None:
        hint = " (it has an opening tag but no closing tag)" if OPEN_TAG.lower() in text.lower() else ""
        wanted = {
            "tagged": f"{OPEN_TAG} ... {CLOSE_TAG} directive",
            "natural": "natural directive (a line of the spec's instruction sentences)",
            None: f"directive ({OPEN_TAG} ... {CLOSE_TAG}, or a line of the spec's instruction sentences)",
        }[style]
        if style == "natural" and patterns is None:
            wanted += f"; spec {spec.source} has no instructions, so it has no natural directives"
        raise DirectiveError(f"no {wanted} found in text{hint}: {text[:120]!r}")
    return _parse_tagged(spec, tagged)


def _parse_natural(spec: ObjectiveSpec, body: str, sentence_re) -> dict[str, int]:
    owner = {s: (o.name, i) for o in spec.objectives for i, s in enumerate(o.instructions)}
    sentences = sentence_re.findall(body)
    if sentences == [NO_PREFERENCE_SENTENCE]:
        return {}
    request = {}
    for sentence in sentences:
        if sentence == NO_PREFERENCE_SENTENCE:
            raise DirectiveError(f"the no-preference sentence is mixed with requests in directive {body!r}")
        name, index = owner[sentence]
        if name in request:
            raise DirectiveError(f"objective {name!r} is requested twice in directive {body!r}")
        request[name] = index
    return validate_request(spec, request)


def _parse_tagged(spec: ObjectiveSpec, match) -> dict[str, int]:
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
        except RecursionError:  # nested past Python's JSON reader: one bad sample, never the whole batch
            raise DirectiveError(f"label is nested too deeply to be MOSLIM JSON: {label[:120]!r}") from None
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


def strip_directive(spec: ObjectiveSpec, request, text: str) -> str:
    """`text` without the directive for `request`, whichever style rendered it (the raw question, for the RM)."""
    for style in STYLES if spec.has_instructions else ("tagged",):
        text = text.replace(render_directive(spec, request, style), "")
    return text.strip()


def apply_directive(
    spec: ObjectiveSpec, request, prompt, placement: str = DEFAULT_PLACEMENT, style: str = DEFAULT_STYLE
) -> list[dict]:
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
    directive = render_directive(spec, request, style)
    natural = _natural_re(spec)
    for m in messages:
        if _DIRECTIVE_RE.search(m["content"]) or (natural and natural[0].search(m["content"])):
            raise DirectiveError(f"the {m['role']} message already carries a directive: {m['content'][:120]!r}")
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
