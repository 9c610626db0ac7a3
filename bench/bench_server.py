"""Reward server throughput and latency: `moslim-openrlhf serve-reward` vs OpenRLHF's own `serve_rm`, same model.

Clients behave like OpenRLHF's vLLM engine actors: each sends ONE sample per request, through OpenRLHF's own HTTP
client code (`SingleTurnAgentExecutor._fetch_rewards_via_http`, a new aiohttp session per request), at 1, 8 and 64
concurrent clients, each level a fixed number of requests (bounded loops), loopback only. Both servers load the same
MOSLIM checkpoint (all-MiniLM-L6-v2 backbone + helpsteer heads); `serve_rm` loads it as a stock scalar RM (the
checkpoint's zero `score` head), so it runs the same backbone forward.

What had to be adapted to run `serve_rm` here, nothing else: the flash-attn shim (`compat.install()`, for
`import openrlhf.models`), `--ds.attn_implementation sdpa`, and on CPU its dtype: its `--ds.param_dtype` accepts only
bf16/fp16, and bf16 on CPU is several times slower than fp32, so `convert_to_torch_dtype` is replaced to give fp32,
the dtype our server uses on CPU. Samples: real HH-RLHF prompts (../shared/data) with a directive, SmolLM2 chat
template, the HH "chosen" reply as response, decoded as OpenRLHF decodes them.

    python -m bench.bench_server [--concurrency 1 8 64] [--requests 48 128 256] [--repeats 2]
"""

import argparse
import asyncio
import gzip
import itertools
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from tqdm import tqdm

from bench import RESULTS_DIR, figure, latency_ms, write_result

REPO = Path(__file__).resolve().parent.parent
HH_FILE = REPO.parent / "shared" / "data" / "hh-rlhf" / "helpful-base-test.jsonl.gz"
SERVE_RM_FP32 = (
    "import runpy, sys, torch; from moslim_plugin.integration import compat; compat.install(); "
    "import openrlhf.utils.utils as u; u.convert_to_torch_dtype = lambda _: torch.float32; "
    "sys.argv[0] = 'serve_rm'; runpy.run_module('openrlhf.cli.serve_rm', run_name='__main__')"
)
# On a GPU, serve_rm as shipped, but with the shim too: without flash-attn its `import openrlhf.models` fails
# (compat.install() is a no-op where the real flash-attn is installed).
SERVE_RM = (
    "import runpy, sys; from moslim_plugin.integration import compat; compat.install(); "
    "sys.argv[0] = 'serve_rm'; runpy.run_module('openrlhf.cli.serve_rm', run_name='__main__')"
)


def make_samples(n: int, max_response_words: int = 120) -> list[tuple[str, str, str]]:
    """(query, prompt, label) triples as OpenRLHF's SingleTurnAgentExecutor would send them."""
    from transformers import AutoTokenizer

    from moslim_plugin.core.directives import apply_directive, request_to_label
    from moslim_plugin.core.spec import load_spec
    from moslim_plugin.data.datasets import TargetSampler
    from moslim_plugin.demo.real_models import smollm2_path

    spec, tok = load_spec("helpsteer"), AutoTokenizer.from_pretrained(smollm2_path())
    sampler = TargetSampler(spec, "subset", seed=0)
    samples = []
    with gzip.open(HH_FILE, "rt") as f:
        for index, line in enumerate(itertools.islice(f, n)):
            chosen = json.loads(line)["chosen"]
            question = chosen.split("\n\nAssistant:")[0].split("\n\nHuman: ", 1)[1].strip()
            response = chosen.split("\n\nAssistant: ", 1)[1].split("\n\nHuman:")[0].strip()
            response = " ".join(response.split()[:max_response_words])
            request = sampler.sample({}, index)
            messages = apply_directive(spec, request, question)
            prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids = tok(prompt, add_special_tokens=False)["input_ids"]
            ids += tok(response + tok.eos_token, add_special_tokens=False)["input_ids"]
            samples.append((tok.decode(ids, skip_special_tokens=False), prompt, request_to_label(spec, request)))
    return samples


def make_checkpoint(directory: Path) -> Path:
    import torch
    from transformers import AutoTokenizer

    from moslim_plugin.core.rm import MultiHeadRewardModel
    from moslim_plugin.core.spec import load_spec
    from moslim_plugin.demo.real_models import minilm_path

    torch.manual_seed(0)
    model = MultiHeadRewardModel.from_backbone(minilm_path(), load_spec("helpsteer"))
    model.save_pretrained(directory, tokenizer=AutoTokenizer.from_pretrained(minilm_path()))
    return directory


def mean_tokens(samples) -> dict:
    """RM tokens per sample: serve_rm reads the whole templated query, ours the (question, response) pair."""
    from transformers import AutoTokenizer

    from moslim_plugin.core.scorer import encode
    from moslim_plugin.demo.real_models import minilm_path
    from moslim_plugin.integration.templates import split_query

    tok = AutoTokenizer.from_pretrained(minilm_path())
    serve_rm = [len(tok(q, add_special_tokens=False, truncation=True, max_length=512).input_ids) for q, *_ in samples]
    ours = [len(encode(tok, *split_query(q, p), 512)["input_ids"]) for q, p, _ in samples]
    return {"moslim": statistics.mean(ours), "serve_rm": statistics.mean(serve_rm)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(cmd: list[str], url: str, sample, log_path: Path, timeout: float = 300) -> subprocess.Popen:
    """Start a server subprocess and wait until it answers a real request."""
    log = open(log_path, "w")
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    body = json.dumps({"query": [sample[0]], "prompts": [sample[1]], "labels": [sample[2]]}).encode()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server {cmd[:4]} exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=30) as response:
                json.loads(response.read())
                return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise TimeoutError(f"server {cmd[:4]} did not answer within {timeout} s:\n{log_path.read_text()[-3000:]}")


async def load_level(url: str, samples, concurrency: int, n_requests: int) -> dict:
    from moslim_plugin.integration import compat

    compat.install()
    from openrlhf.utils.agent import SingleTurnAgentExecutor

    executor = SingleTurnAgentExecutor(url)
    latencies, counter = [], itertools.count()

    async def client():
        while (i := next(counter)) < n_requests:
            query, prompt, label = samples[i % len(samples)]
            start = time.perf_counter()
            reply = (await executor._fetch_rewards_via_http([query], [prompt], [label]))[0]
            latencies.append(time.perf_counter() - start)
            rewards = reply["rewards"]
            if len(rewards) != 1 or not math.isfinite(rewards[0]):
                raise RuntimeError(f"bad reply from {url}: {reply!r:.300}")

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    return {"requests": n_requests, "wall_s": wall, "throughput_rps": n_requests / wall, **latency_ms(latencies)}


def stats_of(base_url: str) -> dict | None:
    try:
        with urllib.request.urlopen(base_url + "/stats", timeout=10) as response:
            return json.loads(response.read())
    except OSError:
        return None


def profile_shares(path: Path) -> dict | None:
    """Where our server spent its time (py-spy raw samples): the RM forward vs everything else of ours."""
    if not path.is_file():
        return None
    counts = {"total": 0, "rm_forward": 0, "batcher_other": 0, "event_loop_http": 0}
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        counts["total"] += int(n)
        if "MultiHeadRewardModel.forward" in stack:
            counts["rm_forward"] += int(n)
        elif "moslim-reward-batcher" in stack:
            counts["batcher_other"] += int(n)  # tokenisation, padding, mapping, diagnostics, queue
        elif "MainThread" in stack:
            counts["event_loop_http"] += int(n)
    total = max(counts["total"], 1)
    return {"samples": counts["total"]} | {k: v / total for k, v in counts.items() if k != "total"}


def plot(results: dict, concurrency: list[int], path: Path) -> None:
    with figure(path, 1, 2, figsize=(10, 4), dpi=100) as (fig, (ax_t, ax_l)):
        for server, levels in results.items():
            best = [max(r["throughput_rps"] for r in levels[str(c)]) for c in concurrency]
            p50 = [statistics.median(r["p50_ms"] for r in levels[str(c)]) for c in concurrency]
            p99 = [statistics.median(r["p99_ms"] for r in levels[str(c)]) for c in concurrency]
            ax_t.plot(concurrency, best, marker="o", label=server)
            ax_l.plot(concurrency, p50, marker="o", label=f"{server} p50")
            ax_l.plot(concurrency, p99, marker="x", linestyle="--", label=f"{server} p99")
        for ax, ylabel in ((ax_t, "requests / s (1 sample each)"), (ax_l, "latency (ms)")):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("concurrent clients")
            ax.set_ylabel(ylabel)
            ax.set_xticks(concurrency, [str(c) for c in concurrency])
            ax.legend()
        fig.suptitle("MOSLIM serve-reward vs OpenRLHF serve_rm, same MiniLM model, loopback")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_server", description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--requests", type=int, nargs="+", default=[16, 32, 128], help="per concurrency level")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--samples", type=int, default=64, help="distinct HH-RLHF samples, cycled")
    parser.add_argument("--max_batch_size", type=int, default=64)
    parser.add_argument("--max_wait_ms", type=float, default=5.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no_profile", action="store_true", help="skip py-spy on our server at top concurrency")
    parser.add_argument("--servers", nargs="+", default=["moslim", "serve_rm"], choices=["moslim", "serve_rm"])
    args = parser.parse_args(argv)
    if len(args.requests) != len(args.concurrency):
        parser.error("--requests needs one count per --concurrency level")
    on_gpu = args.device.startswith("cuda")
    samples = make_samples(args.samples)
    workdir = Path(tempfile.mkdtemp(prefix="bench-server-"))
    checkpoint = make_checkpoint(workdir / "rm")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)

    # Both servers stay up and take turns at each level and repeat, so that a change in the machine's load (shared
    # CPUs) hits both alike; the idle one costs nothing.
    servers, results, server_stats, profile = {}, {s: {} for s in args.servers}, {}, None
    search_path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    profile_with = None if args.no_profile else shutil.which("py-spy", path=search_path)
    try:
        for server in args.servers:
            port = free_port()
            url = f"http://127.0.0.1:{port}/get_reward"
            if server == "moslim":
                cmd = [sys.executable, "-m", "moslim_plugin", "serve-reward", "--reward.model_name_or_path",
                       str(checkpoint), "--server.port", str(port), "--server.log_level", "warning", "--moslim.device",
                       args.device, "--server.max_batch_size", str(args.max_batch_size), "--server.max_wait_ms",
                       str(args.max_wait_ms), "--moslim.max_length", "512"]  # fmt: skip
            else:
                launcher = ["-c", SERVE_RM if on_gpu else SERVE_RM_FP32]
                cmd = [sys.executable, *launcher, "--reward.model_name_or_path", str(checkpoint), "--port", str(port),
                       "--host", "127.0.0.1", "--data.max_len", "512", "--ds.attn_implementation", "sdpa"]  # fmt: skip
            servers[server] = (url, start_server(cmd, url, samples[0], workdir / f"{server}.log"))
        runs = [(c, n, rep, s) for c, n in zip(args.concurrency, args.requests) for rep in range(args.repeats + 1)
                for s in args.servers]  # fmt: skip
        for concurrency, n_requests, repeat, server in tqdm(runs, desc="bench_server", unit="run"):
            url = servers[server][0]
            if repeat == 0:  # warm-up at this concurrency: connections, allocator, thread pools
                asyncio.run(load_level(url, samples, concurrency, concurrency))
                continue
            spy = None
            if profile_with and server == "moslim" and concurrency == max(args.concurrency) and repeat == 1:
                spy = subprocess.Popen([profile_with, "record", "-p", str(servers[server][1].pid), "-f", "raw", "-o",
                                        str(workdir / "profile.txt"), "-r", "50", "--threads"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
            run = asyncio.run(load_level(url, samples, concurrency, n_requests))
            results[server].setdefault(str(concurrency), []).append(run)
            if spy is not None:
                spy.send_signal(signal.SIGINT)  # py-spy writes its samples on SIGINT
                spy.wait(timeout=60)
                profile = profile_shares(workdir / "profile.txt")
        server_stats = {s: stats_of(url.rsplit("/", 1)[0]) for s, (url, _) in servers.items()}
    finally:
        for _, proc in servers.values():
            proc.terminate()
            proc.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)

    headline, summary, tokens = [], [], mean_tokens(samples)
    if set(args.servers) == {"moslim", "serve_rm"}:
        for concurrency in args.concurrency:
            best = {s: max(r["throughput_rps"] for r in results[s][str(concurrency)]) for s in results}
            ratio = best["moslim"] / best["serve_rm"]
            target = ">= 5" if concurrency == max(args.concurrency) else "n/a"
            metric = f"throughput moslim/serve_rm, {concurrency} clients"
            met = ratio >= 5 if target != "n/a" else None
            headline.append({"metric": metric, "value": ratio, "target": target, "met": met})
            rates = f"{best['moslim']:.3g} vs {best['serve_rm']:.3g} req/s"
            summary.append(f"{concurrency} clients: {rates} ({ratio:.1f}x)")
            if concurrency == max(args.concurrency):
                # serve_rm reads the whole templated query, we read (question, response): fewer tokens per sample.
                # The same ratio per RM token separates what batching alone gives.
                per_token = ratio * tokens["moslim"] / tokens["serve_rm"]
                metric = f"same, per RM token ({tokens['moslim']:.0f} vs {tokens['serve_rm']:.0f} tokens/sample)"
                headline.append({"metric": metric, "value": per_token, "target": "n/a", "met": None})
                summary.append(f"per RM token: {per_token:.1f}x")
    plot(results, args.concurrency, RESULTS_DIR / "bench_server.png")
    write_result(
        "bench_server",
        config=vars(args) | {"model": "all-MiniLM-L6-v2 + helpsteer heads (3)", "dtype": "bf16" if on_gpu else "fp32"},
        results={
            "mean_rm_tokens_per_sample": tokens,
            "per_server": results,
            "server_stats": server_stats,
            "profile_moslim_top_concurrency": profile,
        },
        summary="; ".join(summary) or json.dumps(results)[:300],
        headline=headline,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
