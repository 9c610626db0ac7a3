"""The demo's plots (matplotlib PNG): line panels, requested vs achieved level, the combination grid and the
learning curve."""

import itertools
import math


def plot_panels(panels, path, ncols=None) -> str:
    """One PNG of line panels; each panel is {"title", "xlabel", "ylabel", "series": {label: (xs, ys) or (xs, ys, lo,
    hi), the last shaded as an interval}, optional "xticks": labels for x = 0, 1, ..., "diagonal": draw y = x up to
    this value}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = ncols or len(panels)
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.6 * nrows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        if panel.get("diagonal") is not None:
            top = panel["diagonal"]
            ax.plot([0, top], [0, top], color="grey", linestyle=":", label="perfect control")
        for label, (xs, ys, *band) in panel["series"].items():
            line = ax.plot(xs, ys, marker="o", label=label)[0]
            if band:
                ax.fill_between(xs, *band, color=line.get_color(), alpha=0.2)
        ax.set_title(panel["title"])
        ax.set_xlabel(panel.get("xlabel", ""))
        ax.set_ylabel(panel.get("ylabel", ""))
        if panel.get("xticks"):
            ax.set_xticks(range(len(panel["xticks"])), panel["xticks"], rotation=20, fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def plot_requested_vs_achieved(spec, evals: dict, path) -> str:
    """One panel per objective: mean achieved level for each requested level, one line per policy."""
    panels = []
    for name, levels in zip(spec.names, spec.levels):
        series = {}
        for policy, result in evals.items():
            by_level = result["metrics"]["objectives"][name]["by_level"]
            means = [sum(k * c for k, c in enumerate(by_level[str(lv)])) / max(sum(by_level[str(lv)]), 1)
                     for lv in range(levels)]  # fmt: skip
            series[policy] = (list(range(levels)), means)
        panels.append({"title": name, "xlabel": "requested level", "ylabel": "achieved level (mean)",
                       "series": series, "diagonal": levels - 1})  # fmt: skip
    return plot_panels(panels, path)


def plot_combination_grid(spec, evals: dict, unseen, path) -> str:
    """Exact-all rate (every requested level met) of each full combination, greedy: one heat map per policy (rows:
    the first objective's levels; columns: the others' combinations), then the difference of the last from the
    first; unseen combinations (held out of training) framed and marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first, rest = spec.names[0], spec.names[1:]
    columns = list(itertools.product(*(range(spec.levels[spec.index(n)]) for n in rest)))
    rows = range(spec.levels[0])

    def grid(combinations):
        return [[combinations[",".join([f"{first}={r}"] + [f"{n}={v}" for n, v in zip(rest, c)])]["exact_all"]
                 for c in columns] for r in rows]  # fmt: skip

    grids = {name: grid(e["joint_metrics"]["combinations"]) for name, e in evals.items()}
    names = list(grids)
    if len(names) > 1:
        last, base = grids[names[-1]], grids[names[0]]
        grids[f"{names[-1]} - {names[0]}"] = [[a - b for a, b in zip(x, y)] for x, y in zip(last, base)]
    unseen_cells = {(u[first], columns.index(tuple(u[n] for n in rest))) for u in unseen}
    fig, axes = plt.subplots(1, len(grids), figsize=(3.6 * len(grids) + 0.6, 3.4), squeeze=False)
    for ax, (title, values) in zip(axes.flat, grids.items()):
        diff = " - " in title
        image = ax.imshow(values, cmap="RdBu" if diff else "viridis", vmin=-1 if diff else 0, vmax=1)
        for r, row in enumerate(values):
            for c, v in enumerate(row):
                mark = "\nunseen" if (r, c) in unseen_cells else ""
                ax.text(c, r, f"{v:+.2f}{mark}" if diff else f"{v:.2f}{mark}", ha="center", va="center", fontsize=7,
                        color="black" if diff or v > 0.5 else "white")  # fmt: skip
                if mark:
                    ax.add_patch(plt.Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
        ax.set_title(title, fontsize=9)
        ax.set_xticks(range(len(columns)), ["\n".join(f"{n}={v}" for n, v in zip(rest, c)) for c in columns],
                      fontsize=6)  # fmt: skip
        ax.set_yticks(list(rows), [f"{first}={r}" for r in rows], fontsize=7)
        fig.colorbar(image, ax=ax, shrink=0.7)
    fig.suptitle("exact-all rate per full combination (greedy, held-out prompts)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def plot_learning_curve(histories, path) -> str | None:
    """Accuracy vs RL step with 95 % intervals, for each run whose history carries curve points (`curve` logs of
    `--demo.curve_every`); None when none does."""
    metrics = [("single_accuracy", "single-objective accuracy"), ("exact_all_seen", "exact-all, seen combinations"),
               ("exact_all_unseen", "exact-all, unseen combinations")]  # fmt: skip
    runs = {name: [h for h in hist if "curve" in h] for name, hist in histories.items()}
    runs = {name: points for name, points in runs.items() if points}
    if not runs:
        return None
    panels = []
    for key, title in metrics:
        series = {}
        for name, points in runs.items():
            xs = [p["step"] if p["step"] is not None else 0 for p in points]
            series[name] = (xs, *zip(*[(p["curve"][key]["value"], *p["curve"][key]["ci95"]) for p in points]))
        panels.append({"title": title, "xlabel": "RL step", "ylabel": "greedy, held-out subset", "series": series})
    return plot_panels(panels, path)
