"""Controllability metrics of judged answers: per-objective accuracy, conditional gap, MAE and rank correlation;
joint control over full combinations (exact-all rates, seen vs unseen); bootstrap 95 % intervals over prompts, and
the paired interval of the difference between two policies answering the same (prompt, request) items.

Every function takes samples {"prompt", "request", "achieved"} as `evaluate_policy` writes them.
"""

import random

import torch


def combination_key(request: dict[str, int]) -> str:
    return ",".join(f"{name}={level}" for name, level in request.items())


def spearman(x, y) -> float:
    """Rank correlation with average ranks for ties; 0.0 when either side is constant (no ordering to follow)."""

    def ranks(v):
        v = torch.as_tensor(v, dtype=torch.float64)
        order = torch.argsort(v, stable=True)
        r = torch.empty_like(v)
        r[order] = torch.arange(len(v), dtype=torch.float64)
        for value in v.unique():  # average the ranks of tied values
            tie = v == value
            r[tie] = r[tie].mean()
        return r

    if len(x) < 2:
        return 0.0
    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = float(rx.norm() * ry.norm())
    return float((rx * ry).sum()) / denom if denom > 0 else 0.0


def controllability_metrics(spec, samples) -> dict:
    """Metrics from samples {"prompt", "request", "achieved"}; the no-preference sample of a prompt is its default
    (without any, `unrequested_kept` is left out)."""
    default = {s["prompt"]: s["achieved"] for s in samples if not s["request"]}
    per_objective = {}
    for name in spec.names:
        levels = spec.levels[spec.index(name)]
        asked = [s for s in samples if name in s["request"]]
        req = [s["request"][name] for s in asked]
        got = [s["achieved"][name] for s in asked]
        by_level = [
            [sum(g == k for r, g in zip(req, got) if r == level) for k in range(levels)] for level in range(levels)
        ]
        per_objective[name] = {
            "n": len(asked),
            "accuracy": sum(a == b for a, b in zip(req, got)) / max(len(asked), 1),
            "gap": conditional_gap(by_level),
            "mae": sum(abs(a - b) for a, b in zip(req, got)) / max(len(asked), 1),
            "spearman": spearman(req, got),
            "by_level": {str(level): counts for level, counts in enumerate(by_level)},
        }
        if default:
            other = [s for s in samples if s["request"] and name not in s["request"] and s["prompt"] in default]
            kept = sum(s["achieved"][name] == default[s["prompt"]][name] for s in other) / max(len(other), 1)
            per_objective[name]["unrequested_kept"] = kept
            per_objective[name]["default_distribution"] = [
                sum(d[name] == k for d in default.values()) / len(default) for k in range(levels)
            ]
    keys = ("accuracy", "gap", "mae", "spearman") + (("unrequested_kept",) if default else ())
    summary = {key: sum(m[key] for m in per_objective.values()) / len(per_objective) for key in keys}
    summary["accuracy_ci95"] = accuracy_ci95(spec, samples)
    return {"objectives": per_objective, "mean": summary}


def conditional_gap(by_level) -> float:
    """Mean over levels L of P(achieved L | requested L) - P(achieved L | requested another level); `by_level[r][a]`
    counts answers that achieved a when asked for r. For two levels it is P(1 | asked 1) - P(1 | asked 0)."""
    gaps = []
    for level, counts in enumerate(by_level):
        others = [row for r, row in enumerate(by_level) if r != level and sum(row)]
        if not sum(counts) or not others:
            continue
        hit = counts[level] / sum(counts)
        gaps.append(hit - sum(row[level] for row in others) / sum(sum(row) for row in others))
    return sum(gaps) / len(gaps) if gaps else 0.0


def accuracy_ci95(spec, samples, n_boot=1000, seed=0) -> list[float]:
    """Bootstrap 95 % interval of the mean (over objectives) exact-level accuracy, resampling prompts."""
    return bootstrap_ci(prompt_cells(samples), n_boot=n_boot, seed=seed)


def objective_hits(sample) -> list[tuple[str, bool]]:
    """(objective, hit) for each objective the sample requested."""
    return [(name, sample["achieved"][name] == level) for name, level in sample["request"].items()]


def exact_all_hits(sample) -> list[tuple[str, bool]]:
    """One cell: whether every requested level was met."""
    return [("all", all(sample["achieved"][name] == level for name, level in sample["request"].items()))]


def prompt_cells(samples, hits=objective_hits) -> dict[str, dict[str, list[int]]]:
    """prompt -> cell -> [hits, n] over the samples (answers to one prompt are not independent, so a bootstrap
    resamples prompts, each with all its cells)."""
    cells = {}
    for s in samples:
        for cell, hit in hits(s):
            counts = cells.setdefault(s["prompt"], {}).setdefault(cell, [0, 0])
            counts[0] += hit
            counts[1] += 1
    return cells


def cells_mean(cells, prompts) -> float:
    """Mean over cells of each cell's pooled hit rate over `prompts` (repeats count again)."""
    totals = {}
    for p in prompts:
        for cell, (h, n) in cells[p].items():
            total = totals.setdefault(cell, [0, 0])
            total[0] += h
            total[1] += n
    rates = [h / n for h, n in totals.values() if n]
    return sum(rates) / len(rates) if rates else 0.0


def bootstrap_ci(cells, other=None, n_boot=1000, seed=0) -> list[float]:
    """Bootstrap 95 % interval of `cells_mean` over resampled prompts; with `other` (another policy's cells on the
    same prompts), of the PAIRED difference cells - other: each resample draws the same prompts for both."""
    prompts = sorted(cells)
    if other is not None and sorted(other) != prompts:
        raise ValueError("a paired bootstrap needs both policies' answers to the same prompts")
    if not prompts:
        return [0.0, 0.0]
    rng, values = random.Random(seed), []
    for _ in range(n_boot):
        pick = rng.choices(prompts, k=len(prompts))
        values.append(cells_mean(cells, pick) - (cells_mean(other, pick) if other is not None else 0.0))
    values.sort()
    return [values[int(0.025 * (n_boot - 1))], values[int(0.975 * (n_boot - 1))]]


def joint_metrics(spec, samples, unseen=()) -> dict:
    """Metrics of answers to full requests (every objective at once): per objective its accuracy under the joint
    request (with the mean's interval); the exact-all rate over all combinations, the seen and the `unseen` ones
    (held out of training), each with its bootstrap 95 % interval over prompts; and per combination its exact-all
    rate and per-objective accuracy."""
    unseen = [dict(u) for u in unseen]
    groups = {"all": samples, "seen": [s for s in samples if s["request"] not in unseen],
              "unseen": [s for s in samples if s["request"] in unseen]}  # fmt: skip
    exact_all = {}
    for group, chosen in groups.items():
        if chosen:
            cells = prompt_cells(chosen, exact_all_hits)
            exact_all[group] = {"rate": cells_mean(cells, list(cells)), "ci95": bootstrap_ci(cells), "n": len(chosen)}
    cells = prompt_cells(samples)
    objectives = {name: sum(s["achieved"][name] == s["request"][name] for s in samples) / max(len(samples), 1)
                  for name in spec.names}  # fmt: skip
    combinations = {}
    for s in samples:
        entry = combinations.setdefault(combination_key(s["request"]), {"unseen": s["request"] in unseen, "n": 0,
                                        "exact_all": 0.0, "accuracy": dict.fromkeys(spec.names, 0.0)})  # fmt: skip
        entry["n"] += 1
        entry["exact_all"] += exact_all_hits(s)[0][1]
        for name, hit in objective_hits(s):
            entry["accuracy"][name] += hit
    for entry in combinations.values():
        entry["exact_all"] /= entry["n"]
        entry["accuracy"] = {name: hits / entry["n"] for name, hits in entry["accuracy"].items()}
    return {
        "objectives": objectives,
        "mean_accuracy": cells_mean(cells, list(cells)),
        "mean_accuracy_ci95": bootstrap_ci(cells),
        "exact_all": exact_all,
        "combinations": combinations,
    }


# `headline_cells`' metrics as the reports, tables and docs name them.
METRIC_NAMES = {"single_accuracy": "single-objective acc", "joint_accuracy": "acc under joint requests",
                "exact_all": "exact-all, all 12", "exact_all_seen": "exact-all, seen",
                "exact_all_unseen": "exact-all, unseen"}  # fmt: skip


def headline_cells(samples, joint, unseen) -> dict[str, dict]:
    """The prompt cells of each headline metric of greedy answers: single_accuracy (mean over objectives, single-
    objective requests), joint_accuracy (the same under the `joint` full requests), exact_all over every joint
    request, exact_all_seen and exact_all_unseen (`unseen` ones apart). A metric without answers is left out."""
    joint, unseen = [dict(r) for r in joint], [dict(u) for u in unseen]
    selections = {
        "single_accuracy": (lambda r: len(r) == 1 and r not in joint, objective_hits),
        "joint_accuracy": (lambda r: r in joint, objective_hits),
        "exact_all": (lambda r: r in joint, exact_all_hits),
        "exact_all_seen": (lambda r: r in joint and r not in unseen, exact_all_hits),
        "exact_all_unseen": (lambda r: r in joint and r in unseen, exact_all_hits),
    }
    cells = {metric: prompt_cells([s for s in samples if keep(s["request"])], hits)
             for metric, (keep, hits) in selections.items()}  # fmt: skip
    return {metric: c for metric, c in cells.items() if c}


def headline(samples, joint, unseen) -> dict[str, dict]:
    """metric -> {"value", "ci95"} for `headline_cells`' metrics (bootstrap 95 % over prompts)."""
    return {metric: {"value": cells_mean(c, list(c)), "ci95": bootstrap_ci(c)}
            for metric, c in headline_cells(samples, joint, unseen).items()}  # fmt: skip


def paired_differences(samples, other, joint, unseen) -> dict[str, dict]:
    """metric -> {"diff", "ci95"}: `samples` minus `other`, two policies' greedy answers to the same (prompt,
    request) items, for `headline_cells`' metrics; the interval is the paired bootstrap over prompts."""
    mine, theirs = headline_cells(samples, joint, unseen), headline_cells(other, joint, unseen)
    return {metric: {"diff": cells_mean(c, list(c)) - cells_mean(theirs[metric], list(c)),
                     "ci95": bootstrap_ci(c, theirs[metric])}
            for metric, c in mine.items()}  # fmt: skip
