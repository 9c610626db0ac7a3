"""GPU check of the in-process MOSLIM reward: `MoslimRewardModelActor.forward` in bf16 on one GPU.

Single GPU, no network, a few minutes. The reward model is a RANDOM-INIT SmolLM2-135M-sized Llama backbone (576
hidden, 30 layers, 9/3 heads, 49152 vocab) with the helpsteer heads, saved as a MOSLIM checkpoint; the tokenizer
(policy's and RM's) is a byte-level BPE with the ChatML template trained here in a second, so nothing is downloaded.
Samples are built as OpenRLHF builds them (conditioned prompt + response token ids, the MOSLIM label), in
micro-batches of `--micro-batch`. The actor is the real class (OpenRLHF's RewardModelActor subclass) instantiated in
this process: its `init_model_from_pretrained` and `forward` run exactly as in a Ray worker, minus Ray's object
transport. Reported: samples/s and tokens/s of the actor, the same batches through `Scorer.score` alone (so the cost
of decoding and splitting the policy's tokens shows), p50 latency per micro-batch, peak GPU memory.

Without CUDA (or with `--dry-run`) it runs the same path with a tiny backbone in fp32: the CPU fallback `make bench`
uses. vLLM is only imported by OpenRLHF's Ray package at module level; if it is missing, tests/vllm_stub stands in.

    python -m bench.gpu_check_reward_actor [--micro-batch 64] [--batches 12] [--response-tokens 256] [--dry-run]
"""

import argparse
import importlib.util
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace as NS

REPO = Path(__file__).resolve().parent.parent
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WORDS = (
    "the a model answer question helpful concise detailed because however explain example reason step first then "
    "finally water bread light energy city river history music number garden travel simple clear careful"
).split()


def make_tokenizer(rng: random.Random):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [" ".join(rng.choices(WORDS, k=40)) for _ in range(2000)]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2048,
        special_tokens=["<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte: any text round-trips
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|im_end|>")
    fast.chat_template = CHATML
    return fast


def build_rm(path: Path, tokenizer, full: bool):
    import torch
    from transformers import LlamaConfig, LlamaModel

    from moslim_plugin.core.rm import MultiHeadRewardModel
    from moslim_plugin.core.spec import load_spec

    if full:  # SmolLM2-135M's shape
        config = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                             num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192,
                             tie_word_embeddings=True)  # fmt: skip
    else:
        config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, vocab_size=4096, max_position_embeddings=2048)  # fmt: skip
    torch.manual_seed(0)
    model = MultiHeadRewardModel(LlamaModel(config), load_spec("helpsteer"))
    model.save_pretrained(path, tokenizer=tokenizer)
    return model.spec


def make_batches(tokenizer, spec, micro_batch, batches, response_tokens, rng):
    """Micro-batches of (sequences, attention_mask, action_mask, prompts, labels) as Experience fields, and the
    (question, response, request) triples the Scorer alone is timed on."""
    import torch

    from moslim_plugin.core.directives import label_to_request
    from moslim_plugin.data.datasets import TargetSampler, condition_row

    sampler = TargetSampler(spec, "subset", seed=0)
    out, triples = [], []
    for b in range(batches):
        rows = []
        for i in range(micro_batch):
            question = " ".join(rng.choices(WORDS, k=30)).capitalize() + "?"
            row = condition_row({"input": question}, spec, sampler, b * micro_batch + i, "input", "label", "system")
            prompt = tokenizer.apply_chat_template(row["input"], tokenize=False, add_generation_prompt=True)
            response = " ".join(rng.choices(WORDS, k=response_tokens))
            prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            response_ids = tokenizer(response, add_special_tokens=False)["input_ids"][:response_tokens]
            response_ids.append(tokenizer.eos_token_id)
            rows.append((prompt, row["label"], prompt_ids, response_ids))
            triples.append((question, tokenizer.decode(response_ids[:-1]), label_to_request(spec, row["label"])))
        length = max(len(p) + len(r) for _, _, p, r in rows)
        sequences = torch.full((micro_batch, length), tokenizer.pad_token_id)
        attention_mask = torch.zeros(micro_batch, length, dtype=torch.long)
        action_mask = torch.zeros(micro_batch, length - 1, dtype=torch.long)
        for i, (_, _, p, r) in enumerate(rows):  # right padding, as OpenRLHF concatenates samples
            sequences[i, : len(p) + len(r)] = torch.tensor(p + r)
            attention_mask[i, : len(p) + len(r)] = 1
            action_mask[i, len(p) - 1 : len(p) + len(r) - 1] = 1
        out.append((sequences, attention_mask, action_mask, [r[0] for r in rows], [r[1] for r in rows]))
    return out, triples


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--micro-batch", type=int, default=None, help="samples per reward forward (GPU 64, CPU 8)")
    p.add_argument(
        "--batches", type=int, default=None, help="timed micro-batches after 2 warm-up ones (GPU 12, CPU 3)"
    )
    p.add_argument("--response-tokens", type=int, default=None, help="response length (GPU 256, CPU 48)")
    p.add_argument("--dry-run", action="store_true", help="tiny fp32 backbone even on a GPU (checks the path only)")
    args = p.parse_args(argv)

    import torch

    from moslim_plugin.integration import compat

    compat.install()  # no-op where flash-attn is installed
    if importlib.util.find_spec("vllm") is None:
        print("vLLM is not installed: tests/vllm_stub stands in for OpenRLHF's module-level import (no generation)")
        sys.path.insert(0, str(REPO / "tests" / "vllm_stub"))
    from tqdm import tqdm

    from bench import write_result
    from moslim_plugin.core.scorer import Scorer
    from moslim_plugin.integration.launcher import check_moslim_args, split_argv
    from moslim_plugin.integration.ray_reward import MoslimRewardModelActor

    cuda = torch.cuda.is_available()
    full = cuda and not args.dry_run
    micro_batch = args.micro_batch or (64 if full else 8)
    batches = args.batches or (12 if full else 3)
    response_tokens = args.response_tokens or (256 if full else 48)
    rng = random.Random(0)
    work = Path(tempfile.mkdtemp(prefix="moslim-gpu-check-"))
    tokenizer = make_tokenizer(rng)
    tokenizer.save_pretrained(work / "policy")
    spec = build_rm(work / "rm", tokenizer, full)
    data, triples = make_batches(tokenizer, spec, micro_batch, batches + 2, response_tokens, rng)

    # OpenRLHF's args as train_ppo_ray + the launcher build them, reduced to what the reward actor reads.
    openrlhf_args = NS(
        actor=NS(model_name_or_path=str(work / "policy")),
        reward=NS(model_name_or_path=str(work / "rm"), remote_url=None),
        data=NS(apply_chat_template=True, label_key="label"),
        train=NS(agent_func_path=None),
        algo=NS(advantage=NS(estimator="group_norm")),
        critic=NS(model_name_or_path=None),
        ds=NS(param_dtype="bf16" if full else "fp32"),
    )
    moslim, _ = split_argv(["--moslim.max_length", "1024", "--moslim.batch_size", str(micro_batch)])
    openrlhf_args.moslim = check_moslim_args(moslim, openrlhf_args)
    strategy = NS(args=openrlhf_args, print=print, is_rank_0=lambda: True)

    actor = MoslimRewardModelActor.__ray_actor_class__(1, 0, "127.0.0.1", 29500)
    t0 = time.perf_counter()
    actor.init_model_from_pretrained(strategy, str(work / "rm"))
    load_seconds = time.perf_counter() - t0
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    actor_times, rewards = [], []
    for i, (sequences, attention_mask, action_mask, prompts, labels) in enumerate(tqdm(data, desc="reward forward")):
        sync()
        t0 = time.perf_counter()
        r, info = actor.forward(sequences, attention_mask, action_mask=action_mask, prompts=prompts, labels=labels)
        sync()
        if i >= 2:
            actor_times.append(time.perf_counter() - t0)
            rewards.append(r)
    scorer: Scorer = actor.engine.scorer
    scorer_times = []
    for i in tqdm(range(len(data)), desc="Scorer.score alone"):
        q, resp, req = map(list, zip(*triples[i * micro_batch : (i + 1) * micro_batch]))
        sync()
        t0 = time.perf_counter()
        scorer.score(q, resp, req)
        sync()
        if i >= 2:
            scorer_times.append(time.perf_counter() - t0)

    rewards = torch.cat(rewards)
    assert torch.isfinite(rewards).all() and rewards.dtype == torch.float32
    tokens = sum(int(b[1].sum()) for b in data[2:])
    samples = micro_batch * batches
    actor_s, scorer_s = sum(actor_times), sum(scorer_times)
    results = {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "dtype": str(next(scorer.model.parameters()).dtype),
        "backbone": "random-init Llama, SmolLM2-135M shape" if full else "random-init tiny Llama (CPU fallback)",
        "load_seconds": load_seconds,
        "actor_samples_per_s": samples / actor_s,
        "actor_policy_tokens_per_s": tokens / actor_s,
        "scorer_samples_per_s": samples / scorer_s,
        "actor_over_scorer_time": actor_s / scorer_s,
        "p50_micro_batch_seconds": statistics.median(actor_times),
        "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "reward_mean": rewards.mean().item(),
        "diagnostic_keys": sorted(info),
        "actor_times": actor_times,
        "scorer_times": scorer_times,
    }
    config = {"micro_batch": micro_batch, "batches": batches, "response_tokens": response_tokens, "full": full}
    summary = (
        f"{results['device']} {results['dtype']}: reward actor {results['actor_samples_per_s']:.1f} samples/s "
        f"({results['actor_policy_tokens_per_s']:.0f} policy tokens/s), Scorer alone "
        f"{results['scorer_samples_per_s']:.1f} samples/s, p50 {results['p50_micro_batch_seconds'] * 1000:.0f} ms "
        f"per micro-batch of {micro_batch}"
    )
    ratio = results["actor_over_scorer_time"]
    headline = [
        {"metric": "reward actor samples/s", "value": results["actor_samples_per_s"], "target": "report", "met": None},
        {"metric": "actor time / Scorer time (decode + split cost)", "value": ratio, "target": "<= 1.25",
         "met": ratio <= 1.25},
    ]  # fmt: skip
    write_result("gpu_check_reward_actor", config, results, summary, headline)
    return 0


if __name__ == "__main__":
    sys.exit(main())
