"""Controllability evaluation of any policy checkpoint, for any spec, judged by the oracle or by a MOSLIM RM.

    moslim-openrlhf evaluate --actor.model_name_or_path <policy> [--reward.model_name_or_path <moslim rm>]
        [--moslim.spec <spec>] [--eval.judge oracle|rm] [--moslim.style natural|tagged]

For every held-out prompt the policy answers greedily (so the numbers do not depend on sampling luck), once
with a directive for each single (objective, level) pair (so every requested level is tried on the same
prompts) and once with the "no preference" directive (what the policy does by default on that prompt); then, as
RL sees it, `--eval.n_samples_per_prompt` sampled answers per (prompt, request) at `--rollout.temperature`.
The judge gives each answer a level per objective: the oracle (exact, demo objectives only) or the reward model's
most likely class. Per objective, over the responses that requested it:

- accuracy: achieved level == requested level, with a bootstrap 95 % interval for the mean over objectives
  (prompts resampled, since answers to one prompt are not independent);
- gap: the conditional gap, P(level L | asked for L) - P(level L | asked for another level), averaged over L:
  how far the request moves the answer (0 = ignored, 1 = perfect control);
- mae: mean |achieved - requested| in levels;
- spearman: rank correlation between requested and achieved level (0 when the achieved level never varies);
- unrequested_kept (greedy): for responses that requested ANOTHER objective, how often this objective stayed at
  the level the policy gives the same prompt by default.

The metrics and their intervals live in `demo/metrics.py`. Joint control (`joint_metrics`, with `--eval.joint` or
the demo): every prompt is also answered under every full combination of levels (all objectives requested at once).
Per objective its accuracy under the joint request, and the exact-all rate (every requested level met), over all
combinations and apart for those held out of training (`unseen`), each with a bootstrap 95 % interval over prompts.
`bootstrap_ci` also gives the paired interval of the difference between two policies answering the same items (the
same prompts resampled for both).

With the oracle as judge and a reward model given, `rm_agreement` is the accuracy and macro-F1 of the RM's most
likely class against the oracle's level. Writes eval.json, eval.md and a requested-vs-achieved plot to
--eval.output_dir.
"""

import argparse
import itertools
import json
from pathlib import Path

import torch

from moslim_plugin import (
    UserError,
    add_threads_flag,
    nonnegative,
    nonnegative_int,
    positive_int,
    set_threads,
    writable,
)
from moslim_plugin.core.directives import DEFAULT_PLACEMENT, DEFAULT_STYLE, PLACEMENTS, STYLES, apply_directive
from moslim_plugin.demo.metrics import controllability_metrics, joint_metrics
from moslim_plugin.demo.oracle import demo_spec, judge
from moslim_plugin.demo.plots import plot_requested_vs_achieved
from moslim_plugin.demo.report import check_finite, joint_table, metrics_table

DATA_DIR = Path(__file__).parent / "prompts"


def read_prompts(path, input_key="input") -> list[str]:
    """Questions from a .txt file (one per line) or JSON/JSONL rows with an `input_key` string, .gz or not; errors
    name the file and the line or row (`read_local_prompts`, the reader of prepare-prompts)."""
    from moslim_plugin.data.datasets import read_local_prompts

    rows = read_local_prompts(str(path), input_key)
    for i, row in enumerate(rows):
        prompt = row.get(input_key)
        if not isinstance(prompt, str) or not prompt.strip():
            raise UserError(f"{path}: row {i}: expected a non-empty {input_key!r} string, got {prompt!r:.80}")
    return [row[input_key].strip() for row in rows]


def make_output_dir(path, flag: str) -> Path:
    """The output folder, made when there is something to write; `writable` has refused, before the work, a path
    that cannot be one (a file, no permission), so the work is not lost to it and a failed run leaves no folder."""
    writable(path, flag)
    Path(path).mkdir(parents=True, exist_ok=True)
    return Path(path)


def builtin_prompts(split: str) -> list[str]:
    if split not in ("train", "heldout"):
        raise ValueError(f"built-in prompt split must be 'train' or 'heldout', got {split!r}")
    return read_prompts(DATA_DIR / f"prompts_{split}.txt")


def full_requests(spec) -> list[dict[str, int]]:
    """Every full combination of levels (one level of each objective), in spec order: the joint evaluation's
    requests (12 for the demo's 3 x 2 x 2)."""
    return [dict(zip(spec.names, levels)) for levels in itertools.product(*(range(n) for n in spec.levels))]


def eval_requests(spec, prompts, joint=()):
    """(prompt, request) pairs: every prompt with every single (objective, level) request, then with each `joint`
    request (full combinations), then every prompt with no preference."""
    pairs = [(name, level) for name, levels in zip(spec.names, spec.levels) for level in range(levels)]
    requested = [(p, {name: level}) for p in prompts for name, level in pairs]
    return requested + [(p, dict(r)) for p in prompts for r in joint] + [(p, {}) for p in prompts]


def rm_agreement(spec, scorer, samples) -> dict[str, dict[str, float]]:
    """Per objective, the reward model's most likely class against the oracle's level on these answers: accuracy and
    macro-F1 as train-rm computes them on its held-out rows. On a policy's answers to the held-out prompts this is a
    held-out measure on real outputs (prompts the RM never saw, no edited text)."""
    from moslim_plugin.data.rm_metrics import head_metrics

    probs = scorer.classify([s["prompt"] for s in samples], [s["response"] for s in samples])
    labels = torch.tensor([[s["achieved"][name] for name in spec.names] for s in samples])
    metrics = head_metrics(probs, labels, spec)
    return {name: {key: metrics[name][key] for key in ("accuracy", "macro_f1")} for name in spec.names}


def make_judge(spec, scorer=None):
    """`(judge_fn, name)`: judge_fn(prompts, responses) -> achieved level per objective for each response, by the
    oracle (exact; it refuses objectives it has no judge for) or by the MOSLIM RM's most likely class."""
    if scorer is None:
        judge("", spec)  # fails now, naming the objectives the oracle cannot judge, rather than after generating
        return (lambda prompts, responses: [judge(t, spec) for t in responses]), "oracle"
    spec.check_same(scorer.spec, "the judging reward model")

    def rm_judge(prompts, responses):
        predicted = scorer.score(list(prompts), list(responses), [{} for _ in responses]).probs.argmax(-1)
        return [{name: int(predicted[i, k]) for k, name in enumerate(spec.names)} for i in range(len(responses))]

    return rm_judge, "reward model"


def evaluate_policy(
    model, tokenizer, prompts, spec=None, max_new_tokens=48, scorer=None, batch_size=16, desc=None,
    placement=DEFAULT_PLACEMENT, style=DEFAULT_STYLE, judge_fn=None, n_samples=0, temperature=0.7, seed=0, joint=(),
    unseen=(),
):  # fmt: skip
    """Greedy answers to every eval request (metrics: single-objective requests; joint_metrics: the `joint` full
    requests, `unseen` reported apart; samples: all) and, with n_samples > 0, n sampled answers to every request
    but the no-preference one (sampled_metrics, sampled_joint_metrics). The judge defaults to the oracle; a scorer
    adds rm_agreement (on every greedy answer)."""
    from moslim_plugin.demo.policy import generate

    spec = spec or demo_spec()
    judge_fn = judge_fn or make_judge(spec)[0]
    desc = desc or "evaluate"

    def answer(pairs, temperature, what):
        messages = [apply_directive(spec, request, prompt, placement, style) for prompt, request in pairs]
        _, _, texts = generate(model, tokenizer, messages, max_new_tokens, temperature, batch_size=batch_size,
                               desc=f"{desc} ({what})")  # fmt: skip
        achieved = judge_fn([p for p, _ in pairs], texts)
        return [
            {"prompt": p, "request": r, "response": t, "achieved": a} for (p, r), t, a in zip(pairs, texts, achieved)
        ]

    joint = [dict(r) for r in joint]

    def metrics(samples, prefix=""):
        # The joint answers stay out of the single-objective metrics (and their unrequested_kept) and vice versa.
        single = [s for s in samples if s["request"] not in joint]
        out = {f"{prefix}metrics": controllability_metrics(spec, single)}
        if joint:
            out[f"{prefix}joint_metrics"] = joint_metrics(spec, [s for s in samples if s["request"] in joint], unseen)
        return out

    samples = answer(eval_requests(spec, prompts, joint), 0.0, "greedy")
    result = {**metrics(samples), "samples": samples}
    if n_samples > 0:
        torch.manual_seed(seed)
        pairs = [pair for pair in eval_requests(spec, prompts, joint) if pair[1] for _ in range(n_samples)]
        sampled = answer(pairs, temperature, f"{n_samples} sampled at T={temperature}")
        result.update(metrics(sampled, "sampled_"))
        result["sampled_samples"] = sampled
    if scorer is not None:
        result["metrics"]["rm_agreement"] = rm_agreement(spec, scorer, samples)
    return result


def build_parser():
    p = argparse.ArgumentParser(prog="moslim-openrlhf evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--actor.model_name_or_path", type=str, required=True, help="policy checkpoint (HF folder)")
    p.add_argument(
        "--reward.model_name_or_path",
        type=str,
        default=None,
        help="MOSLIM RM: the judge (--eval.judge rm), or with the oracle as judge, its agreement",
    )
    p.add_argument("--moslim.spec", type=str, default=None,
                   help="objective spec (default: the reward model's, else the demo's oracle objectives)")  # fmt: skip
    p.add_argument(
        "--eval.judge",
        choices=("oracle", "rm"),
        default=None,
        help="who gives the achieved levels (default: the oracle if it judges every objective)",
    )
    p.add_argument("--eval.dataset", type=str, default=None, help="prompts: .txt (one a line) or .jsonl with 'input'")
    p.add_argument("--eval.max_samples", type=positive_int, default=64, help="held-out prompts (each at every level)")
    p.add_argument(
        "--eval.n_samples_per_prompt", type=nonnegative_int, default=2, help="sampled answers per request (0: none)"
    )
    p.add_argument(
        "--eval.joint", action="store_true", help="also answer every full combination of levels (joint control)"
    )
    p.add_argument("--eval.output_dir", type=str, default="runs/evaluate")
    p.add_argument("--rollout.max_new_tokens", type=positive_int, default=48)
    p.add_argument("--rollout.temperature", type=nonnegative, default=0.7, help="for the sampled evaluation")
    p.add_argument("--rollout.micro_batch_size", type=positive_int, default=16)
    p.add_argument("--device", type=str, default="cpu", choices=["cpu", "cuda"], help="cuda: policy and RM on the GPU")
    p.add_argument("--moslim.placement", default=DEFAULT_PLACEMENT, choices=PLACEMENTS,
                   help="where the directive goes: use the placement the policy was trained with")  # fmt: skip
    p.add_argument("--moslim.style", default=DEFAULT_STYLE, choices=STYLES,
                   help="directive style: use the one the policy was trained with")  # fmt: skip
    add_threads_flag(p)
    return p


def load_judge(args):
    """(spec, judge_fn, judge name, scorer or None) from the flags: the spec is the one given, else the RM's, else
    the demo's; the judge is the oracle when it can judge every objective (unless --eval.judge rm), else the RM."""
    from moslim_plugin.core.spec import load_spec

    scorer, spec = None, load_spec(args.moslim.spec) if args.moslim.spec else None  # the file before the model
    if args.reward.model_name_or_path:
        from moslim_plugin.core.scorer import Scorer

        scorer = Scorer.from_pretrained(args.reward.model_name_or_path, device=args.device)
    spec = spec or (scorer.spec if scorer else demo_spec())
    if scorer is not None:
        spec.check_same(scorer.spec, f"reward model {args.reward.model_name_or_path}")
    choice = args.eval.judge
    if choice is None:
        try:
            judge("", spec)
            choice = "oracle"
        except ValueError:
            choice = "rm"
    if choice == "rm" and scorer is None:
        raise UserError(f"spec {spec.source} has objectives the oracle cannot judge: pass a MOSLIM reward model "
                        "(--reward.model_name_or_path) to judge them")  # fmt: skip
    judge_fn, name = make_judge(spec, scorer if choice == "rm" else None)
    return spec, judge_fn, name, scorer


def main(argv=None) -> int:
    from openrlhf.utils.config import hierarchize

    from moslim_plugin.demo.policy import load_policy, torch_device
    from moslim_plugin.integration import compat

    compat.install()  # the reward model path may import openrlhf.models, which needs flash-attn's helpers
    args = hierarchize(build_parser().parse_args(argv))
    set_threads(args.threads)
    torch_device(args.device)  # `--device cuda` without a GPU: a one-line error before the reward model loads
    if args.eval.n_samples_per_prompt and not args.rollout.temperature > 0:
        raise UserError(f"--rollout.temperature {args.rollout.temperature}: the sampled evaluation needs > 0 "
                        "(or --eval.n_samples_per_prompt 0)")  # fmt: skip
    writable(args.eval.output_dir, "--eval.output_dir")
    prompts = read_prompts(args.eval.dataset) if args.eval.dataset else builtin_prompts("heldout")
    prompts = prompts[: args.eval.max_samples]
    spec, judge_fn, judge_name, scorer = load_judge(args)
    if args.eval.joint and len(spec.names) < 2:
        raise UserError(f"--eval.joint: spec {spec.source} has one objective, so no request is joint")
    model, tokenizer = load_policy(args.actor.model_name_or_path, device=args.device)
    result = evaluate_policy(
        model, tokenizer, prompts, spec, args.rollout.max_new_tokens, scorer if judge_name == "oracle" else None,
        args.rollout.micro_batch_size, placement=args.moslim.placement, style=args.moslim.style, judge_fn=judge_fn,
        n_samples=args.eval.n_samples_per_prompt, temperature=args.rollout.temperature,
        joint=full_requests(spec) if args.eval.joint else (),
    )  # fmt: skip
    check_finite({k: v for k, v in result.items() if "metrics" in k})
    name = Path(args.actor.model_name_or_path).name
    evals = {name: result}
    settings = {
        "policy": args.actor.model_name_or_path,
        "judge": judge_name,
        "spec": spec.to_dict(),
        "prompts": len(prompts),
        "placement": args.moslim.placement,
        "style": args.moslim.style,
        "n_samples_per_prompt": args.eval.n_samples_per_prompt,
        "temperature": args.rollout.temperature,
    }
    out = make_output_dir(args.eval.output_dir, "--eval.output_dir")
    (out / "eval.json").write_text(json.dumps({**settings, **result}, indent=1))
    plot = plot_requested_vs_achieved(spec, evals, out / "requested_vs_achieved.png")
    md = [f"# Controllability of `{args.actor.model_name_or_path}`", "",
          f"Judged by the **{judge_name}**; {len(prompts)} prompts, greedy, plus {args.eval.n_samples_per_prompt} "
          f"sampled answers per request at T={args.rollout.temperature}; directive style `{args.moslim.style}`, "
          f"placement `{args.moslim.placement}`.", "", metrics_table(spec, evals), ""]  # fmt: skip
    if "rm_agreement" in result["metrics"]:
        agreement = result["metrics"]["rm_agreement"]
        md += [
            "RM agreement with the oracle (accuracy / macro-F1): "
            + ", ".join(f"{k} {v['accuracy']:.3f} / {v['macro_f1']:.3f}" for k, v in agreement.items())
        ]
    if "joint_metrics" in result:
        md += ["", joint_table(spec, evals)]
    md += ["", f"![requested vs achieved]({Path(plot).name})", ""]
    (out / "eval.md").write_text("\n".join(md))
    print("\n".join(md[:6]))
    print(f"report: {out / 'eval.md'}  json: {out / 'eval.json'}  plot: {plot}")
    return 0
