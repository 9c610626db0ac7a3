"""Shared by bench/bench_relabel.py (cost) and bench/relabel_heldout.py (held-out accuracy): the issue-15 setting.

Objectives formality + format (list), natural-sentence directives at the end of the user message, the oracle as
reward. Main's oracle has no list objective and main's directives have no natural style yet (both are on the
`directives` branch), so this module carries the two sentences per objective and the list judge, copied from that
branch (moslim_plugin/demo/oracle.py there); formality is main's oracle judge.
"""

import re

import torch

from moslim_plugin.core.spec import load_spec
from moslim_plugin.demo.oracle import formality_level, request_hits

SPEC = load_spec({
    "objectives": [
        {"name": "formality", "levels": 2, "level_names": ["formal", "casual"]},
        {"name": "format", "levels": 2, "level_names": ["one paragraph", "a bulleted list"]},
    ]
})  # fmt: skip
SENTENCES = {
    "formality": [
        "Write formally and never use contractions.",
        "Write casually and use contractions like it's and don't.",
    ],
    "format": ["Answer in one paragraph without any list.", "Answer as a bulleted list."],
}
REQUESTS = [{name: level} for name in SENTENCES for level in range(2)]
_LIST_ITEM_RE = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+\S", re.MULTILINE)


def judge(text: str) -> dict[str, int]:
    return {"formality": formality_level(text), "format": int(len(_LIST_ITEM_RE.findall(text)) >= 2)}


def messages(question: str, request: dict) -> list[dict]:
    """The chat for one request: the directive sentences after the question (placement `user_suffix`)."""
    directive = " ".join(SENTENCES[name][level] for name, level in request.items())
    return [{"role": "user", "content": f"{question}\n\n{directive}"}]


def oracle_reward(questions, responses, requests):
    """One judgement per distinct response, then the request check per (response, request): what relabelling needs."""
    judged = {text: judge(text) for text in set(responses)}
    hits = [request_hits(judged[text], rq) for text, rq in zip(responses, requests)]
    return torch.tensor(hits), {"oracle_hit": torch.tensor(hits)}


def rows(questions, seed_offset: int = 0) -> list[dict]:
    """One single-objective request per prompt, every request equally often."""
    out = []
    for i, q in enumerate(questions):
        request = REQUESTS[(i + seed_offset) % len(REQUESTS)]
        out.append({"question": q, "request": request, "messages": messages(q, request)})
    return out
