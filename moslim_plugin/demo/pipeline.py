"""The whole MOSLIM loop on one CPU machine with real small models: `make demo` (or `make demo QUICK=1`).

1. sample: SmolLM2-135M-Instruct answers the built-in training prompts under random preference directives, each
   asking for k = 1..K objectives at once (`--moslim.sampling subset`, as the OpenRLHF dataset hook draws them);
   the oracle (moslim_plugin/demo/oracle.py) labels every response with its exact level per objective. `UNSEEN`
   full combinations are never requested here or in the RL, and responses that have one are left out of the RM's
   and RiC's data: the evaluation reports them apart, as combinations no stage trained on. `--demo.top_up SHARE`
   adds answers of the levels below SHARE of the samples (0.15 by default: the level-share bar).
2. rm: the multi-head reward model (all-MiniLM-L6-v2 backbone) is trained on those labels with `train-rm`
   (`--demo.rm_seed`: its split, initialisation and row order).
3. baselines: the starting policy, and RiC (rewards-in-context): SFT of the policy on the same samples with each
   directive RELABELLED to the levels the response actually has. RiC is the natural multi-objective baseline here:
   it needs no reward model and no RL, only the samples we already have, and it conditions on the same directive.
4. rl: MOSLIM RL (local_rl.py, OpenRLHF's algorithm code) with the reward from the trained RM through the Scorer and
   the `moslim` mapping, once per seed. With `--demo.rules length,format` those objectives are exact spec rules
   (docs/rules.md): the Scorer computes their levels, the RM trains heads only for the others, and everything else
   (samples, prompts, seeds, budget) stays the same, so the two runs compare exact against learned rewards.
5. evaluate: every policy on the held-out prompts under every single-objective request and every full
   combination (greedy, plus sampled answers at the rollout temperature), judged by the ORACLE, with bootstrap 95 %
   intervals, the conditional gap, the exact-all rate of seen and unseen combinations, and each MOSLIM seed's
   paired differences against the starting policy and RiC; report.md / report.json / plots. During RL the RM's
   level is compared with the oracle's on every rollout (the reward-hacking monitor), and `--demo.curve_every N`
   evaluates the policy every N steps on a fixed subset of the held-out prompts (the learning curve).

Each step is one stage function; `main` runs them in order. The directive reads as `--moslim.style` says (natural
sentences by default: see docs/demo/screening.md for why, and for how the objectives were chosen).

Every number in the report comes from this run; nothing is hard-coded. The base-policy evaluation is cached in the
output folder (keyed by its settings), so a second run skips it. `--demo.size gpu --device cuda` runs every stage on
one GPU at 20x the samples (bench/device/README.md).
"""

import argparse
import hashlib
import json
import random
import re
import time
from pathlib import Path

import torch

from moslim_plugin import (
    UserError,
    add_threads_flag,
    integer,
    nonnegative_int,
    positive,
    positive_int,
    probability,
    set_threads,
)
from moslim_plugin.core.directives import DEFAULT_STYLE, PLACEMENTS, STYLES, apply_directive
from moslim_plugin.core.mappings import parse_mapping_kwargs, resolve_mapping
from moslim_plugin.data.datasets import TargetSampler
from moslim_plugin.demo.evaluate import builtin_prompts, evaluate_policy, full_requests, make_output_dir, rm_agreement
from moslim_plugin.demo.local_rl import add_rl_args, check_rl_args, train_policy
from moslim_plugin.demo.metrics import headline, paired_differences
from moslim_plugin.demo.oracle import RULES, demo_spec, judge, request_hits
from moslim_plugin.demo.policy import generate, load_policy, torch_device
from moslim_plugin.demo.report import agreement_monitor, level_shares, summarize, targets, write_report
from moslim_plugin.demo.ric import ric_sft
from moslim_plugin.integration.reward_config import check_mapping

# Initial samples, RM epochs, RiC epochs, held-out prompts (of 64) and sampled answers per eval request, RL steps
# per seed, max_new_tokens, prompts per RL step. Any of them can be overridden with --demo.<key>. The full preset is
# `make demo`'s (one seed). It was meant to fit 30 minutes on 2 CPU cores but takes longer (docs/results.md times each
# stage): the joint evaluation answers 20 requests per held-out prompt, so the sampled half is off
# (--demo.eval_samples 1 adds it), and the RM trains 5 epochs.
SIZES = {
    "full": dict(samples=384, rm_epochs=5, ric_epochs=1, eval_prompts=64, eval_samples=0, rl_steps=12,
                 max_new_tokens=48, batch=8),
    "quick": dict(samples=16, rm_epochs=1, ric_epochs=1, eval_prompts=3, eval_samples=1, rl_steps=1,
                  max_new_tokens=8, batch=2),
    # One H100/H200 (--device cuda): 20x full's initial samples and RL samples per seed, 8 sampled answers per eval
    # request (64 prompts is every held-out prompt); RM epochs halved for 20x the rows. Estimate in
    # bench/device/README.md (made for 1,920 initial samples, before full went to 384; not re-estimated).
    "gpu": dict(samples=7680, rm_epochs=2, ric_epochs=1, eval_prompts=64, eval_samples=8, rl_steps=30,
                max_new_tokens=48, batch=64),
}  # fmt: skip
# The gpu preset's flag defaults (flags on the command line still win): a GPU decodes and trains a 135M model at the
# cost of a kernel launch per layer per token, so a whole rollout (64 x 4) and an evaluation chunk go in one batch.
GPU_FLAGS = {"moslim.generate_batch_size": 512, "rollout.micro_batch_size": 64}


def build_parser():
    p = argparse.ArgumentParser(prog="moslim-openrlhf demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--demo.size", default="full", choices=list(SIZES), help="size preset (gpu: with --device cuda)")
    p.add_argument("--quick", dest="demo.size", action="store_const", const="quick", help="= --demo.size quick")
    p.add_argument("--out", type=str, default="runs/demo", help="output folder")
    # One seed by default (`make demo` within 30 minutes); the evidence run gives three (docs/results.md).
    p.add_argument("--seeds", type=integer, nargs="+", default=[1], help="one MOSLIM RL run per seed")
    p.add_argument("--moslim.mapping", type=str, default="moslim")
    p.add_argument("--moslim.mapping_kwargs", type=str, default=None)
    # 1e-4, with balanced class weights and the word cuts (`augment`): the length head learns better than at 3e-4
    # unweighted without them (docs/results.md, "Why the demo's defaults").
    p.add_argument("--moslim.rm_lr", type=positive, default=1e-4, help="reward-model learning rate")
    # At the end of the user message, right before the answer, where a 135M model attends most: the starting policy
    # follows the directive more often there than in the system message (docs/results.md, "Why the demo's defaults").
    p.add_argument("--moslim.placement", default="user_suffix", choices=PLACEMENTS, help="where the directive goes")
    p.add_argument("--moslim.style", default=DEFAULT_STYLE, choices=STYLES, help="how the directive reads")
    # The requests' mix, drawn as the OpenRLHF dataset hook's --moslim.sampling draws them (data/datasets.py):
    # subset = k = 1..K objectives per request, each k equally likely; single = one; uniform = all K.
    p.add_argument("--moslim.sampling", default="subset", choices=("subset", "single", "uniform"),
                   help="how many objectives each sample / RL request asks for (subset: 1..K)")  # fmt: skip
    # At the level-share bar by default: without it lists stay under the bar in the samples, and over two RM draws
    # the top-up was not measured worse than without it (docs/results.md, "Balancing the level shares").
    p.add_argument("--demo.top_up", type=probability, default=0.15,
                   help="top up the samples of every level below this share of them (the level-share bar is 0.15; "
                   "0: off)")  # fmt: skip
    # Lists are the level the 135M policy writes least: with one objective per request they were 12 % of the samples
    # asked as often as prose and 18 % asked 2:1, but 9 % with joint requests (docs/results.md, "Why the demo's
    # defaults", "Balancing the level shares"), hence the top-up. Asking 4:1 is the balanced option.
    p.add_argument("--demo.list_weight", type=positive_int, default=2,
                   help="format requests ask for a list this many times as often as for prose")  # fmt: skip
    # The RM's own draw: its train/held-out split, head initialisation and row order (the samples stay the same).
    p.add_argument("--demo.rm_seed", type=integer, default=RM_SETTINGS["seed"], help="the reward model's seed")
    p.add_argument("--demo.curve_every", type=nonnegative_int, default=0,
                   help="evaluate each RL run every N steps on the first held-out prompts (0: off)")  # fmt: skip
    p.add_argument("--demo.curve_prompts", type=positive_int, default=32, help="held-out prompts the curve evaluates")
    p.add_argument(
        "--demo.rules",
        type=lambda text: [name.strip() for name in text.split(",") if name.strip()],
        default=[],
        help=f"comma-separated objectives scored by an exact spec rule instead of a learned RM head (of: "
        f"{', '.join(RULES)}; docs/rules.md)",
    )
    for key in SIZES["full"]:
        # Counts of 0 would fail far from the flag or give an empty report; only the sampled evaluation may be off.
        kind = nonnegative_int if key == "eval_samples" else positive_int
        p.add_argument(f"--demo.{key}", type=kind, default=None, help=f"override the size preset's {key}")
    add_threads_flag(p)
    add_rl_args(p)
    # The demo's RL defaults, sized for 2 CPU cores (any flag can still be given on the command line).
    p.set_defaults(
        **{
            "actor.adam.lr": 2e-4,
            "algo.kl.init_coef": 0.0,
            "rollout.n_samples_per_prompt": 4,
            "rollout.micro_batch_size": 32,
            # At temperature 1 (full vocabulary) the 135M policy mostly writes word salad; the evaluation decodes
            # greedily, so rollouts at 0.7 sample the coherent answers whose style the evaluation measures.
            "rollout.temperature": 0.7,
            # Two passes over each rollout batch: the best of the ablations' RL settings, at about twice the RL
            # compute per seed (docs/results.md, "Why the demo's defaults").
            "train.max_epochs": 2,
        }
    )
    return p


def sample_stage(model, tokenizer, demo, n, seed):
    """n responses to training prompts, each under a request drawn as the RL draws them (`request_rows`: k = 1..K
    objectives), labelled by the oracle, plus, with --demo.top_up, the `top_up` of the levels below that share of
    them. Returns (samples, the top-up's counts or None)."""
    rollout = demo.args.rollout
    torch.manual_seed(seed)

    def answer(rows):
        _, _, texts = generate(
            model, tokenizer, [r["messages"] for r in rows], rollout.max_new_tokens, rollout.temperature,
            batch_size=demo.args.moslim.generate_batch_size, desc="sample (policy)",
        )  # fmt: skip
        return [
            {"question": r["question"], "request": r["request"], "response": t, "labels": judge(t, demo.spec)}
            for r, t in zip(rows, texts)
        ]

    samples = answer(request_rows(demo, n, seed))
    if not demo.args.demo.top_up:
        return samples, None
    extra, counts = top_up(demo, samples, answer, demo.args.demo.top_up, seed)
    return samples + extra, counts


TOP_UP_BATCH = 32  # answers per top-up round


def top_up(demo, samples, answer, share, seed):
    """More samples of the levels below `share` of `samples`: requests asking for the rarest such level (from a
    second draw of `request_rows`) are answered by `answer`, and the answers the oracle puts at that level are kept,
    until every level reaches the share or len(samples) more answers were generated (the bound: the 135M policy
    writes a list in about one of four answers asked for one). The RL's prompts are not changed. Returns (the kept
    samples, each naming its level in "top_up"; {"share", "generated", "kept": {level: count}, "unmet": [levels
    still below the share]})."""
    spec, budget = demo.spec, len(samples)
    pool = request_rows(demo, 8 * budget, seed + 1)
    extra, generated, kept = [], 0, {}

    def below():  # the levels under the share, rarest first, as "name=level"
        shares = level_shares(spec, samples + extra, {})["samples"]
        return [key for _, key in sorted((value, key) for key, value in shares.items() if value < share)]

    while below() and generated < budget:
        name, level = below()[0].split("=")
        level = int(level)
        batch = [r for r in pool if r["request"].get(name) == level][: min(TOP_UP_BATCH, budget - generated)]
        if not batch:  # no request left that asks for this level: no answer could be kept
            break
        pool = [r for r in pool if all(r is not b for b in batch)]
        generated += len(batch)
        hits = [dict(s, top_up=f"{name}={level}") for s in answer(batch) if s["labels"][name] == level]
        extra += hits
        kept[f"{name}={level}"] = kept.get(f"{name}={level}", 0) + len(hits)
    unmet = below()
    print(f"top-up: {generated} answers generated for levels below {share:.0%}, kept {kept}"
          + (f"; still below: {unmet}" if unmet else ""), flush=True)  # fmt: skip
    return extra, {"share": share, "generated": generated, "kept": kept, "unmet": unmet}


def augment(samples, spec, seed):
    """Cheap edits of every sampled response, relabelled by the oracle: its first k sentences and its first n
    words (shorter lengths; a cut mid-sentence is what a rollout that hits max_new_tokens looks like, and the same
    text at two lengths teaches the length head to count words, not recognise content), a formal, impersonal, calm
    rewrite (contractions expanded, "you" replaced, "!" -> ".") and the other format (a list joined into one
    paragraph, or a paragraph split into bullets: the policy rarely lists unasked); where the oracle's verdict
    changes along the words, the two prefixes either side of one such change. More and more balanced rows for the
    reward model without generating more; the RL and the evaluation never see these edits."""
    rng = random.Random(seed)
    rows = []
    for s in samples:
        sentences = [x for x in re.split(r"(?<=[.!?])\s+|\n+", s["response"]) if x.strip()] or [s["response"]]
        cut = " ".join(sentences[: rng.randint(1, len(sentences))])
        # Word prefixes keep the response's own whitespace: a rollout cut at max_new_tokens keeps its line breaks.
        prefixes = [s["response"][: m.end()] for m in re.finditer(r"\S+", s["response"])] or [s["response"]]
        cut_words = prefixes[rng.randint(1, max(1, len(prefixes) - 1)) - 1]
        formal = s["response"]
        for pattern, repl in _FORMAL_REWRITES:
            formal = re.sub(pattern, repl, formal, flags=re.IGNORECASE)
        items = [re.sub(r"^\s*(?:[-*•]|\d+[.)])\s+", "", x) for x in sentences]
        listed = re.search(r"^\s*(?:[-*•]|\d+[.)])\s", s["response"], re.MULTILINE) is not None
        other = " ".join(items) if listed else "\n".join(f"- {x}" for x in items)
        edits = [(t, judge(t, spec), kind) for t, kind in
                 ((cut, "sentences"), (cut_words, "words"), (formal, "formal"), (other, "format"))]  # fmt: skip
        # The two word prefixes either side of a place where the oracle's verdict changes (21 vs 20 words, the second
        # list item, the first contraction): the head learns where a level ends from a pair one word apart.
        verdicts = [judge(prefix, spec) for prefix in prefixes]
        flips = [k for k in range(1, len(prefixes)) if verdicts[k] != verdicts[k - 1]]
        if flips:
            k = rng.choice(flips)
            edits += [(prefixes[i], verdicts[i], "pair") for i in (k - 1, k)]
        # "edit" names the edit (train-rm ignores it; bench/demo_rm_check.py sets the pairs apart).
        rows += [
            {"question": s["question"], "response": t, "labels": labels, "edit": kind} for t, labels, kind in edits
        ]
    return rows


_FORMAL_REWRITES = [
    (r"\b(ca)n['’]t\b", r"\1n not"), (r"\bwon['’]t\b", "will not"), (r"\b(\w+)n['’]t\b", r"\1 not"),
    (r"['’]re\b", " are"), (r"['’]ll\b", " will"), (r"['’]ve\b", " have"), (r"\bI['’]m\b", "I am"),
    (r"\b(it|that|there|here|what|who|he|she)['’]s\b", r"\1 is"), (r"\blet['’]s\b", "let us"),
    (r"\b(i|you|we|they|he|she|it)['’]d\b", r"\1 would"),
    (r"\byourself\b", "oneself"), (r"\byourselves\b", "themselves"), (r"\byours\b", "one's own"),
    (r"\byour\b", "one's"), (r"\byou\b", "one"), (r"!", "."),
]  # fmt: skip


class Demo:
    """The run's fixed context, built once: flags, sizes, spec, prompts, output folder, stage timings."""

    def __init__(self, args):
        from moslim_plugin.demo.real_models import smollm2_path

        self.args = args
        self.preset = args.demo.size
        args.quick = self.preset == "quick"
        torch_device(args.device)  # `--device cuda` without a GPU stops here, before any model is loaded
        self.size = dict(SIZES[self.preset])
        self.size.update({k: v for k, v in vars(args.demo).items() if k in SIZES["full"] and v is not None})
        args.rollout.max_new_tokens = self.size["max_new_tokens"]
        args.rollout.batch_size = self.size["batch"]
        args.data.max_samples = self.size["rl_steps"] * self.size["batch"]
        self.args = check_rl_args(args)
        if len(set(args.seeds)) < len(args.seeds):  # a second run of a seed would overwrite the first's policy
            raise UserError(f"--seeds {' '.join(map(str, args.seeds))}: each seed once")
        # A bad mapping would otherwise stop the run only at the RM stage, minutes in. The RM's statistics come with
        # that stage: until then the per-sample normalisation stands in for a mapping pinned to them.
        kwargs = parse_mapping_kwargs(resolve_mapping(args.moslim.mapping), args.moslim.mapping_kwargs)
        if kwargs.get("norm") in ("dataset", "running"):
            kwargs = {**kwargs, "norm": "sample"}
        self.spec = demo_spec(args.demo.rules)
        if args.demo.top_up > 1 / max(self.spec.levels):  # no sample set can give every level more
            raise UserError(
                f"--demo.top_up {args.demo.top_up}: expected a share in [0, {1 / max(self.spec.levels):.3f}]"
                f" (1 / the most levels an objective has): no samples give every level more"
            )
        check_mapping(args.moslim.mapping, kwargs, self.spec, None)
        self.out = make_output_dir(args.out, "--out")
        self.request_weights, self.unseen = {"format": (1, args.demo.list_weight)}, [dict(u) for u in UNSEEN]
        self.joint = full_requests(self.spec)
        self.policy_path = Path(args.actor.model_name_or_path or smollm2_path())
        self.train_prompts = builtin_prompts("train")
        self.heldout = builtin_prompts("heldout")[: self.size["eval_prompts"]]
        self.placement, self.style = args.moslim.placement, args.moslim.style
        self.timings, self.t_start = {}, time.time()

    def chat(self, question, request):
        """The chat for `question` with `request`'s directive, in the run's placement and style."""
        return apply_directive(self.spec, request, question, self.placement, self.style)

    def stage(self, name):
        self.timings[name] = time.time()
        print(f"\n== {name} ==", flush=True)

    def done(self, name):
        self.timings[name] = round(time.time() - self.timings[name], 1)

    def evaluate(self, model, tokenizer, scorer, desc):
        """Greedy on every held-out prompt and request, plus sampled answers at the rollout temperature; oracle."""
        return evaluate_policy(
            model, tokenizer, self.heldout, self.spec, self.args.rollout.max_new_tokens, scorer,
            batch_size=max(56, self.args.moslim.generate_batch_size),  # 56: the CPU default; gpu preset: 512
            desc=desc, placement=self.placement, style=self.style, n_samples=self.size["eval_samples"],
            temperature=self.args.rollout.temperature, joint=self.joint, unseen=self.unseen,
        )  # fmt: skip

    def seen(self, samples):
        """The samples whose oracle levels are not an unseen combination: what the RM and RiC may train on."""
        return [s for s in samples if s["labels"] not in self.unseen]


# train-rm settings of the RM stage besides backbone, batch, epochs and lr (bench/demo_rm_check.py --train varies
# those). Balanced class weights: lists and the middle length band are the rare classes. Kept by held-out NLL
# (train-rm's default): an RM kept by macro-F1 scored its length head higher but trained a worse policy. Numbered
# words: read plain, the length head could not count words at the band edges; numbered, it can (docs/results.md,
# "Why the demo's defaults").
RM_SETTINGS = dict(
    eval_ratio=0.2, seed=0, max_len=192, lr_warmup_ratio=0.1, class_weights="balanced", number_words=True
)


def rm_stage(demo, samples):
    """Train the multi-head RM on the oracle-labelled samples plus their cheap edits; returns (scorer, result)."""
    from moslim_plugin.core.scorer import Scorer
    from moslim_plugin.data.train_rm import TrainRMConfig, train_reward_model
    from moslim_plugin.demo.real_models import minilm_path

    samples = demo.seen(samples)
    rows = [{"question": s["question"], "response": s["response"], "labels": s["labels"]} for s in samples]
    # An edit can land on an unseen combination too (a formal rewrite of a casual answer): left out as well.
    rows += [row for row in augment(samples, demo.spec, seed=0) if row["labels"] not in demo.unseen]
    rm_dir = demo.out / "rm"
    rm_batch = 8 if demo.args.quick else 16
    config = TrainRMConfig(
        model_name_or_path=str(minilm_path()), spec=demo.spec, output_dir=str(rm_dir), micro_batch_size=rm_batch,
        batch_size=rm_batch, max_epochs=demo.size["rm_epochs"], lr=demo.args.moslim.rm_lr,
        **{**RM_SETTINGS, "seed": demo.args.demo.rm_seed},
        overwrite=True,  # the RM is retrained on every run into the same folder
        max_num=0,  # and the demo resumes by stage, not inside one: no checkpoints
        device=demo.args.device,
    )  # fmt: skip
    result = train_reward_model(config, rows)
    m = demo.args.moslim
    device = demo.args.device
    return Scorer.from_pretrained(rm_dir, mapping=m.mapping, mapping_kwargs=m.mapping_kwargs, device=device), result


def base_eval_stage(demo, model, tokenizer, scorer):
    """The starting policy's evaluation, cached in the output folder by everything it depends on."""
    a = demo.args
    # The learned spec's fingerprint whatever --demo.rules says: the base policy's answers and the oracle's verdicts
    # do not depend on how the RL would score them.
    key_parts = [str(demo.policy_path), demo.heldout, a.rollout.max_new_tokens, demo_spec().fingerprint,
                 demo.placement, demo.style, demo.size["eval_samples"], a.rollout.temperature, demo.joint,
                 demo.unseen]  # fmt: skip
    key_parts += [a.device] if a.device != "cpu" else []  # GPU kernels answer slightly differently; CPU keys unchanged
    key = hashlib.sha256(json.dumps(key_parts).encode()).hexdigest()[:16]
    cache = demo.out / f"eval_base_{key}.json"
    if cache.is_file():
        print(f"(cached: {cache})")
        result = json.loads(cache.read_text())
    else:
        result = demo.evaluate(model, tokenizer, None, "evaluate base")
        cache.write_text(json.dumps(result))
    # RM agreement is re-measured every run: the RM is new each time.
    result["metrics"]["rm_agreement"] = rm_agreement(demo.spec, scorer, result["samples"])
    return result


# Full combinations held out of training: never requested in the samples or the RL, and no sample or edit with these
# levels is in the RM's or RiC's data. Chosen before any run so that every level, and every pair of levels of two
# objectives, still occurs in a trained combination: only the three-way combination is new (a Latin square over
# length; the first is the example, "short, as a list, casual").
UNSEEN = (
    {"length": 0, "format": 1, "formality": 1},
    {"length": 1, "format": 0, "formality": 0},
    {"length": 2, "format": 1, "formality": 0},
)


def request_rows(demo, n, seed):
    """n training prompts with their requests and chats: the sample stage's and the RL's rows. The prompts come in a
    seeded order, repeating when n needs more; request i is `TargetSampler`'s draw i for `--moslim.sampling` and
    `seed`, with the run's level weights (`--demo.list_weight`), never an unseen combination (`UNSEEN`)."""
    order = random.Random(seed).sample(range(len(demo.train_prompts)), len(demo.train_prompts))
    sampler = TargetSampler(demo.spec, demo.args.moslim.sampling, seed, weights=demo.request_weights,
                            exclude=demo.unseen)  # fmt: skip
    rows = []
    for i in range(n):
        question, request = demo.train_prompts[order[i % len(order)]], sampler.sample({}, i)
        rows.append({"question": question, "request": request, "messages": demo.chat(question, request)})
    return rows


def rl_stage(demo, scorer, seed, base_eval):
    """MOSLIM RL for one seed, reward = Scorer(RM, mapping) on the raw question; returns (history, evaluation).
    With --demo.curve_every N, the policy is evaluated every N steps (and at the end) on the first
    --demo.curve_prompts held-out prompts; step 0 is the starting policy's evaluation on them."""

    def reward_fn(questions, responses, requests):
        result = scorer.score(questions, responses, requests)
        # Logged only, never rewarded: the oracle's verdict on the requested levels, each level's share of the
        # rollouts (RL can only reinforce a level it samples: the report checks every level's share, of all rollouts
        # and of those whose request includes the objective, the only ones whose reward it moves), and the RM's most
        # likely level against the oracle's per objective (the reward-hacking monitor).
        achieved = [judge(t, demo.spec) for t in responses]
        predicted = result.probs.argmax(-1)
        info = {"oracle_hit": torch.tensor([request_hits(a, rq) for a, rq in zip(achieved, requests)])}
        for k, (name, levels) in enumerate(zip(demo.spec.names, demo.spec.levels)):
            oracle = torch.tensor([a[name] for a in achieved])
            asked = torch.tensor([name in rq for rq in requests]).float()
            info[f"agree/{name}"] = (predicted[:, k] == oracle).float()
            info[f"asked/{name}"] = asked
            for level in range(levels):
                info[f"level/{name}={level}"] = (oracle == level).float()
                info[f"asked_level/{name}={level}"] = (oracle == level).float() * asked
        return result.rewards, info

    every, subset = demo.args.demo.curve_every, demo.heldout[: demo.args.demo.curve_prompts]

    def curve(step, model, tokenizer):
        if not every or (step % every and step != demo.size["rl_steps"]):
            return None
        result = evaluate_policy(
            model, tokenizer, subset, demo.spec, demo.args.rollout.max_new_tokens, batch_size=56,
            desc=f"curve step {step}", placement=demo.placement, style=demo.style, joint=demo.joint,
            unseen=demo.unseen,
        )  # fmt: skip
        return {"curve": headline(result["samples"], demo.joint, demo.unseen)}

    demo.args.train.seed = seed
    demo.args.ckpt.output_dir = str(demo.out / f"policy_seed{seed}")
    rows = request_rows(demo, demo.size["rl_steps"] * demo.size["batch"], seed)
    rl = train_policy(demo.args, rows, reward_fn, on_step=curve)
    history = rl["history"]
    if every:  # greedy decoding is deterministic: the starting policy's answers on the subset are its step 0
        start = [s for s in base_eval["samples"] if s["prompt"] in subset]
        history = [{"step": 0, "curve": headline(start, demo.joint, demo.unseen)}, *history]
    model, tokenizer = load_policy(rl["output_dir"], device=demo.args.device)
    return history, demo.evaluate(model, tokenizer, scorer, f"evaluate seed {seed}")


def joint_summary(evals, seeds, joint, unseen) -> dict:
    """Every policy's headline metrics with intervals, and each MOSLIM seed's paired differences against the
    starting policy and RiC on the same (prompt, request) items."""
    against = {"starting policy": "base", "RiC": "RiC SFT"}
    return {
        "headline": {name: headline(e["samples"], joint, unseen) for name, e in evals.items()},
        "paired": {f"MOSLIM seed {s}": {ref: paired_differences(evals[f"MOSLIM seed {s}"]["samples"],
                                                                evals[name]["samples"], joint, unseen)
                                        for ref, name in against.items()} for s in seeds},
    }  # fmt: skip


def main(argv=None) -> int:
    from openrlhf.utils.config import hierarchize

    from moslim_plugin.integration import compat

    compat.install()  # before openrlhf.models (RiC SFT and RL use its Actor)
    parser = build_parser()
    if vars(parser.parse_args(argv))["demo.size"] == "gpu":
        parser.set_defaults(**GPU_FLAGS)
    args = hierarchize(parser.parse_args(argv))
    set_threads(args.threads)
    demo = Demo(args)
    size, out = demo.size, demo.out

    demo.stage("sample")
    model, tokenizer = load_policy(demo.policy_path, args.moslim.trainable_layers, device=args.device)
    samples, top = sample_stage(model, tokenizer, demo, size["samples"], seed=0)
    with open(out / "samples.jsonl", "w") as f:
        f.writelines(json.dumps(s) + "\n" for s in samples)
    demo.done("sample")

    demo.stage("rm")
    scorer, rm_result = rm_stage(demo, samples)
    demo.done("rm")

    evals, histories = {}, {}
    demo.stage("evaluate base")
    evals["base"] = base_eval_stage(demo, model, tokenizer, scorer)
    demo.done("evaluate base")

    demo.stage("RiC SFT")
    ric_losses = ric_sft(model, tokenizer, demo, demo.seen(samples), size["ric_epochs"], seed=0)
    evals["RiC SFT"] = demo.evaluate(model, tokenizer, scorer, "evaluate RiC")
    del model
    demo.done("RiC SFT")

    for seed in args.seeds:
        demo.stage(f"MOSLIM RL seed {seed}")
        histories[f"MOSLIM seed {seed}"], evals[f"MOSLIM seed {seed}"] = rl_stage(demo, scorer, seed, evals["base"])
        demo.done(f"MOSLIM RL seed {seed}")

    demo.stage("report")
    summary = summarize(evals, args.seeds, rm_result, ric_losses)
    summary["level_shares"] = level_shares(demo.spec, samples, histories)
    summary["sample_top_up"] = top
    summary.update(joint_summary(evals, args.seeds, demo.joint, demo.unseen))
    summary["agreement_monitor"] = agreement_monitor(
        demo.spec, histories, size["batch"] * args.rollout.n_samples_per_prompt
    )
    summary["targets"] = targets(summary, args.seeds)
    write_report(demo, evals, histories, summary)
    return 0
