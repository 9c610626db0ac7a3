"""Rating rows for the reward model: loaded and checked against the spec, split by group (question by default),
encoded as the Scorer reads them, batched.

Rows come from `moslim-openrlhf prepare-ratings`: `{"question", "response", "labels": {objective: level | null}}`.
"""

import hashlib
import json
import os

import torch
from tqdm import tqdm

from moslim_plugin import UserError
from moslim_plugin.core.directives import DirectiveError, validate_request
from moslim_plugin.data.ratings import MISSING, get_field, read_records
from moslim_plugin.data.rm_metrics import IGNORE

HELD_OUT_FILE = "held_out.jsonl"  # train-rm writes the held-out rows beside the model; evaluate-rm reads them


def load_rows(data, spec, source: str) -> list[dict]:
    """Rating rows from a path or a list, checked against the spec before any model is built."""
    rows = read_records(data) if isinstance(data, (str, os.PathLike)) else list(data)
    if not rows:
        raise UserError(f"{source}: the dataset is empty")
    for i, row in enumerate(rows):
        where = f"{source}: row {i}"
        for key in ("question", "response"):
            if not isinstance(row.get(key), str):
                raise UserError(f"{where}: expected a {key!r} string, got {row.get(key)!r:.80}")
        labels = row.get("labels")
        if not isinstance(labels, dict):
            raise UserError(f"{where}: expected 'labels' {{objective: level or null}}, got {labels!r:.80}")
        try:
            validate_request(spec, labels, masked_ok=True)
        except DirectiveError as e:
            raise UserError(f"{where}: labels: {e}") from None
    counts = {name: sum(row["labels"].get(name) is not None for row in rows) for name in spec.names}
    if not any(counts.values()):
        raise UserError(f"{source}: no row has a label for any objective of {list(spec.names)}")
    return rows


def split_by_group(rows, eval_ratio: float, seed: int, key: str = "question", source: str = "<rows>"):
    """(training rows, held-out rows, the split's record). Rows are grouped by `key`, a field, dotted path or
    template of the row (`question`, `conversation_id`, "{context}"), and round(eval_ratio x groups) whole groups are
    held out (at least one, never all), chosen by a seeded hash of the group: a group never lands in both parts, and
    the held-out share of groups is within one group of `eval_ratio`."""
    of_row = []
    for i, row in enumerate(rows):
        group = get_field(row, key)
        if group is MISSING:
            raise UserError(f"{source}: row {i}: no {key!r} to group by (--moslim.split_key); row keys: {list(row)}")
        of_row.append(group if isinstance(group, str) else json.dumps(group, sort_keys=True))
    groups = sorted(set(of_row), key=lambda g: hashlib.sha256(f"{seed}/{g}".encode()).digest())
    if len(groups) < 2:
        raise UserError(
            f"{source}: every row has the same --moslim.split_key {key!r} ({groups[0]!r:.60}): one group, nothing "
            "to hold out; pass --eval.dataset or another --moslim.split_key"
        )
    n_held = min(len(groups) - 1, max(1, round(eval_ratio * len(groups))))
    held = set(groups[:n_held])
    train_rows = [row for row, group in zip(rows, of_row) if group not in held]
    eval_rows = [row for row, group in zip(rows, of_row) if group in held]
    record = {"split_key": key, "eval_ratio": eval_ratio, "seed": seed, "groups": len(groups)}
    record.update(held_out_groups=n_held, train_rows=len(train_rows), held_out_rows=len(eval_rows))
    return train_rows, eval_rows, record


def encode_rows(rows, tokenizer, spec, max_len, source, number_words=False):
    """Each row encoded once, exactly as the Scorer reads a pair at reward time (`scorer.encode`: chat template or
    pair encoding, the question truncated from its start, words numbered if asked), with its labels (IGNORE for a
    missing rating)."""
    from moslim_plugin.core.scorer import encode

    out = []
    for row in tqdm(rows, desc=f"encode {os.path.basename(source)}", leave=False):
        try:
            encoded = encode(tokenizer, row["question"], row["response"], max_len, number_words)
        except ValueError as e:
            raise ValueError(f"{source}: row with question {row['question'][:60]!r}: {e}") from None
        out.append((encoded, [IGNORE if row["labels"].get(n) is None else row["labels"][n] for n in spec.names]))
    return out


def collate(batch, tokenizer):
    inputs = tokenizer.pad([encoded for encoded, _ in batch], return_tensors="pt")
    return dict(inputs), torch.tensor([labels for _, labels in batch], dtype=torch.long)


def load_tokenizer(path):
    """The backbone's tokenizer, with a pad token, and with a line-break token when it would fold line breaks away."""
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    from moslim_plugin.core.rm import ensure_pad_token

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError) as e:  # transformers' "no such model / no tokenizer files / bad config"
        raise UserError(f"--model.model_name_or_path {path!r}: no tokenizer ({type(e).__name__}: {e})") from None
    # BERT-style tokenizers (all-MiniLM-L6-v2's) fold "\n" into a space: "- a\n- b" (a list) and "- a - b" (a
    # paragraph) read the same, which capped the demo's format head (docs/results.md). A "\n" token, saved with the
    # checkpoint's tokenizer, makes every scorer of this RM read line breaks as training did (build_model sizes the
    # embedding for it). Tokenizers that already keep line breaks are left as they are.
    if tokenizer("a\nb")["input_ids"] == tokenizer("a b")["input_ids"]:
        tokenizer.add_tokens([AddedToken("\n", normalized=False, special=False)])
    return ensure_pad_token(tokenizer)
