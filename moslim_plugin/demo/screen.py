"""Screening: can the starting policy read the directive at all? Run it before spending GPU hours on RL.

    moslim-openrlhf screen [--actor.model_name_or_path <policy>] [--moslim.spec <spec>]
        [--reward.model_name_or_path <moslim rm>] [--eval.dataset prompts.txt] [--screen.output_dir docs/demo]

RL can only reinforce what the policy already does now and then, so an objective is worth training when asking
for a level already moves the answer somewhat, and every level turns up in sampled answers. For each directive
style and placement, the policy answers every prompt under every single-objective request, greedily and
`--eval.n_samples_per_prompt` times at `--rollout.temperature`; the judge (the oracle where it judges every
objective, otherwise the MOSLIM reward model) gives the achieved levels. Per objective it writes:

- the level rates under each request (how often each level came out when level L was asked for),
- the conditional gap P(level L | asked for L) - P(level L | asked for another level), averaged over L,
- the share of each level among the sampled answers that asked for the objective (what RL would see),

as screening.md, screening.json and screening.png in --screen.output_dir. An objective passes when its gap
reaches --screen.min_gap (greedy and sampled) and every level reaches --screen.min_share of the sampled answers.
"""

import argparse
import json
import time

from moslim_plugin import Range, add_threads_flag, positive, positive_int, probability, set_threads, writable
from moslim_plugin.core.directives import PLACEMENTS, STYLES
from moslim_plugin.demo.evaluate import builtin_prompts, evaluate_policy, load_judge, make_output_dir, read_prompts
from moslim_plugin.demo.plots import plot_panels
from moslim_plugin.demo.report import check_finite


def build_parser():
    p = argparse.ArgumentParser(prog="moslim-openrlhf screen", description=__doc__.split("\n\n")[0])
    p.add_argument("--actor.model_name_or_path", default=None, help="policy (default: bundled SmolLM2-135M-Instruct)")
    p.add_argument("--moslim.spec", default=None, help="objectives (default: the RM's, else every oracle objective)")
    p.add_argument("--reward.model_name_or_path", default=None, help="MOSLIM RM: the judge where no oracle exists")
    p.add_argument(
        "--screen.oracle_objectives", nargs="+", default=None, help="without a spec: these oracle objectives"
    )
    p.add_argument("--eval.judge", choices=("oracle", "rm"), default=None, help="default: the oracle if it can")
    p.add_argument("--eval.dataset", default=None, help="prompts: .txt (one per line) or .jsonl with 'input'")
    p.add_argument("--eval.max_samples", type=positive_int, default=16, help="prompts")
    p.add_argument("--eval.n_samples_per_prompt", type=positive_int, default=3, help="sampled answers per request")
    p.add_argument("--rollout.temperature", type=positive, default=0.7)
    p.add_argument("--rollout.max_new_tokens", type=positive_int, default=48)
    p.add_argument("--rollout.micro_batch_size", type=positive_int, default=48)
    p.add_argument("--screen.styles", nargs="+", default=list(STYLES), choices=STYLES)
    p.add_argument("--screen.placements", nargs="+", default=["system", "user_suffix"], choices=PLACEMENTS)
    p.add_argument(
        "--screen.min_gap", type=Range(float, -1, 1), default=0.2, help="P(L | asked L) - P(L | asked other)"
    )
    p.add_argument("--screen.min_share", type=probability, default=0.15, help="of the sampled answers")
    p.add_argument("--screen.output_dir", default="runs/screen")
    add_threads_flag(p)
    return p


def screen_condition(model, tokenizer, spec, prompts, judge_fn, args, style, placement) -> dict:
    """Gap, accuracy, level rates (greedy and sampled) and sampled level shares per objective, for one condition."""
    result = evaluate_policy(
        model, tokenizer, prompts, spec, args.rollout.max_new_tokens, None, args.rollout.micro_batch_size,
        desc=f"{style}/{placement}", placement=placement, style=style, judge_fn=judge_fn,
        n_samples=args.eval.n_samples_per_prompt, temperature=args.rollout.temperature,
    )  # fmt: skip
    sampled = result["sampled_samples"]
    out = {"samples": result["samples"] + sampled}
    for name, levels in zip(spec.names, spec.levels):
        row = {}
        for mode, metrics in (("greedy", result["metrics"]), ("sampled", result["sampled_metrics"])):
            m = metrics["objectives"][name]
            rates = {lv: [c / max(sum(counts), 1) for c in counts] for lv, counts in m["by_level"].items()}
            row[mode] = {"gap": m["gap"], "accuracy": m["accuracy"], "rates": rates}
        # Among the sampled answers that asked for this objective: in the demo's RL each prompt asks for one
        # objective, so these are the rollouts whose reward teaches it.
        asked = [s for s in sampled if name in s["request"]]
        row["sampled_share"] = [sum(s["achieved"][name] == k for s in asked) / len(asked) for k in range(levels)]
        gaps_ok = min(row["greedy"]["gap"], row["sampled"]["gap"]) >= args.screen.min_gap
        row["passes"] = gaps_ok and min(row["sampled_share"]) >= args.screen.min_share
        out[name] = row
    return out


def screening_markdown(spec, results, settings) -> str:
    conditions = list(results)
    lines = [
        "# Screening: does the starting policy follow the directive?",
        "",
        f"Policy `{settings['policy']}`, judged by the **{settings['judge']}**; {settings['prompts']} prompts, each "
        f"under every single-objective request, answered greedily and {settings['n_samples_per_prompt']} times at "
        f"T={settings['temperature']}, {settings['max_new_tokens']} new tokens. Gap = P(level L | asked L) - "
        "P(level L | asked another level), mean over L. Passes: gap >= "
        f"{settings['min_gap']} greedy and sampled, and every level in >= {settings['min_share']:.0%} of sampled "
        "answers.",
        "",
        "## Conditional gap, greedy / sampled",
        "",
        "| objective | " + " | ".join(f"{s} / {p}" for s, p in conditions) + " |",
        "|" + " --- |" * (1 + len(conditions)),
    ]
    for name in spec.names:
        cells = []
        for c in conditions:
            r = results[c][name]
            mark = " ✓" if r["passes"] else ""
            cells.append(f"{r['greedy']['gap']:.2f} / {r['sampled']['gap']:.2f}{mark}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "✓ = passes (gap and sampled level shares).", ""]
    for style, placement in conditions:
        lines += [
            f"## {style} / {placement}",
            "",
            "| objective | asked | greedy level rates | sampled level rates | exact acc greedy / sampled |",
            "| --- | --- | --- | --- | --- |",
        ]
        for name in spec.names:
            r = results[(style, placement)][name]
            for lv in r["greedy"]["rates"]:
                g = ", ".join(f"{x:.2f}" for x in r["greedy"]["rates"][lv])
                s = ", ".join(f"{x:.2f}" for x in r["sampled"]["rates"][lv])
                lines.append(f"| {name} | {lv} | {g} | {s} | {r['greedy']['accuracy']:.2f} / "
                             f"{r['sampled']['accuracy']:.2f} |")  # fmt: skip
            share = ", ".join(f"{x:.2f}" for x in r["sampled_share"])
            lines.append(f"| {name} | share among sampled answers asking for it | | {share} | |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    from openrlhf.utils.config import hierarchize

    from moslim_plugin.demo.oracle import oracle_spec
    from moslim_plugin.demo.policy import load_policy
    from moslim_plugin.demo.real_models import smollm2_path
    from moslim_plugin.integration import compat

    compat.install()
    args = hierarchize(build_parser().parse_args(argv))
    set_threads(args.threads)
    writable(args.screen.output_dir, "--screen.output_dir")
    if args.moslim.spec is None and args.reward.model_name_or_path is None:
        args.moslim.spec = oracle_spec(args.screen.oracle_objectives).to_dict()  # the oracle's candidate objectives
    prompts = read_prompts(args.eval.dataset) if args.eval.dataset else builtin_prompts("train")
    prompts = prompts[: args.eval.max_samples]
    spec, judge_fn, judge_name, _ = load_judge(args)
    policy = args.actor.model_name_or_path or smollm2_path()
    model, tokenizer = load_policy(policy)
    results, t0 = {}, time.time()
    for style in args.screen.styles:
        for placement in args.screen.placements:
            results[(style, placement)] = screen_condition(
                model, tokenizer, spec, prompts, judge_fn, args, style, placement
            )
    settings = {
        "policy": str(policy) if args.actor.model_name_or_path else "SmolLM2-135M-Instruct (bundled)",
        "judge": judge_name,
        "spec": spec.to_dict(),
        "prompts": len(prompts),
        "prompt_source": args.eval.dataset or "built-in train prompts",
        "n_samples_per_prompt": args.eval.n_samples_per_prompt,
        "temperature": args.rollout.temperature,
        "max_new_tokens": args.rollout.max_new_tokens,
        "min_gap": args.screen.min_gap,
        "min_share": args.screen.min_share,
        "seconds": round(time.time() - t0, 1),
    }
    samples = {f"{s}/{p}": r.pop("samples") for (s, p), r in results.items()}
    report = {"settings": settings, "conditions": {f"{s}/{p}": r for (s, p), r in results.items()}}
    check_finite(report)
    out = make_output_dir(args.screen.output_dir, "--screen.output_dir")
    (out / "screening_samples.json").write_text(json.dumps(samples, indent=1))
    (out / "screening.json").write_text(json.dumps(report, indent=1))
    (out / "screening.md").write_text(screening_markdown(spec, results, settings))
    labels = [f"{s}\n{p}" for s, p in results]
    panels = [
        {"title": f"{name}: conditional gap", "xlabel": "style / placement", "ylabel": "gap", "xticks": labels,
         "series": {mode: (list(range(len(results))), [r[name][mode]["gap"] for r in results.values()])
                    for mode in ("greedy", "sampled")}}
        for name in spec.names
    ]  # fmt: skip
    plot_panels(panels, out / "screening.png", ncols=min(3, len(panels)))
    print(screening_markdown(spec, results, settings).split("\n## ")[1])
    print(f"{settings['seconds']:.0f} s; wrote {out / 'screening.md'}, screening.json, screening.png, "
          "screening_samples.json")  # fmt: skip
    return 0
