"""Reward server under hostile load: `moslim-openrlhf serve-reward` with 64 and 256 concurrent clients on loopback.

Each client sends a fixed number of requests (bounded), a deterministic mix: single valid samples (as OpenRLHF's
engine actors send them), large valid requests (32 samples, the server's per-request cap), malformed bodies (not
JSON, missing fields), oversized bodies (over the body limit) and requests over the sample cap. Reported per level:
the HTTP statuses of each kind, errors of the valid requests (non-200 or a reward that differs from the one the
same server gave the same sample alone, before the load), p50/p99 latency of the single valid requests, and the
server's peak resident memory (VmHWM). After the load, every sample is scored again alone and must get the same
reward: the server is still correct. Model: all-MiniLM-L6-v2 + helpsteer heads (random), CPU fp32.

    python -m bench.bench_load_server [--concurrency 64 256] [--requests 128 256]
"""

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from tqdm import tqdm

from bench import RESULTS_DIR, figure, latency_ms, write_result
from bench.bench_server import free_port, make_checkpoint, make_samples, start_server

KINDS = ("valid", "valid_large", "malformed", "oversized_body", "too_many_samples")
# Out of every 40 requests: 29 single valid, 1 large valid (at the sample cap), 4 malformed, 4 oversized bodies,
# 2 over the sample cap.
MIX = ["valid"] * 29 + ["valid_large"] + ["malformed", "oversized_body"] * 4 + ["too_many_samples"] * 2
MAX_SAMPLES, MAX_BODY_MB = 32, 1.0


def body_of(kind: str, samples, i: int) -> bytes:
    def request(rows):
        return json.dumps({"query": [q for q, _, _ in rows], "prompts": [p for _, p, _ in rows],
                           "labels": [lab for _, _, lab in rows]}).encode()  # fmt: skip

    if kind == "valid":
        return request([samples[i % len(samples)]])
    if kind == "valid_large":
        return request([samples[(i + k) % len(samples)] for k in range(MAX_SAMPLES)])
    if kind == "malformed":
        return b"{not json" if i % 2 else json.dumps({"query": ["x"], "labels": [None]}).encode()
    if kind == "oversized_body":
        return request([samples[0]]) + b" " * int(MAX_BODY_MB * (1 << 20) + 1024)
    return request([samples[k % len(samples)] for k in range(MAX_SAMPLES + 1)])


async def run_level(url: str, samples, baseline: list[float], concurrency: int, n_requests: int) -> dict:
    import aiohttp

    statuses = {kind: {} for kind in KINDS}
    latencies, wrong = [], []
    counter = iter(range(n_requests))
    timeout = aiohttp.ClientTimeout(total=300)

    async def client(session):
        for i in counter:
            kind = MIX[i % len(MIX)]
            body = body_of(kind, samples, i)
            start = time.perf_counter()
            try:
                async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
                    status, reply = response.status, await response.read()
            except aiohttp.ClientError as e:  # a server that closes the connection on an oversized body
                status, reply = f"client error {type(e).__name__}", b""
            elapsed = time.perf_counter() - start
            statuses[kind][str(status)] = statuses[kind].get(str(status), 0) + 1
            if kind.startswith("valid") and status == 200:
                got = json.loads(reply)["rewards"]
                n = 1 if kind == "valid" else MAX_SAMPLES
                expected = (
                    [baseline[(i + k) % len(samples)] for k in range(n)] if n > 1 else [baseline[i % len(samples)]]
                )
                if len(got) != n or any(abs(a - b) > 1e-4 for a, b in zip(got, expected)):
                    wrong.append(i)
            if kind == "valid":
                latencies.append(elapsed)

    start = time.perf_counter()
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    wall = time.perf_counter() - start
    valid_errors = sum(n for kind in ("valid", "valid_large") for s, n in statuses[kind].items() if s != "200")
    return {
        "requests": n_requests,
        "wall_s": wall,
        "statuses": statuses,
        "valid_errors": valid_errors + len(wrong),
        "valid_wrong_rewards": len(wrong),
        **{f"valid_{key}": value for key, value in latency_ms(latencies).items()},
    }


def score_alone(url: str, samples) -> list[float]:
    rewards = []
    for query, prompt, label in samples:
        body = json.dumps({"query": [query], "prompts": [prompt], "labels": [label]}).encode()
        request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            rewards.append(json.loads(response.read())["rewards"][0])
    return rewards


def memory_mib(pid: int) -> dict:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            fields[key] = int(value.split()[0]) / 1024
    return {"peak_rss_mib": fields.get("VmHWM"), "rss_mib": fields.get("VmRSS")}


def plot(levels: dict, path: Path) -> None:
    concurrency = [int(c) for c in levels]
    with figure(path, figsize=(6, 4), dpi=100) as (fig, ax):
        ax.plot(concurrency, [levels[str(c)]["valid_p50_ms"] for c in concurrency], marker="o", label="p50")
        ax.plot(concurrency, [levels[str(c)]["valid_p99_ms"] for c in concurrency], marker="x", label="p99")
        ax.set_xscale("log", base=2)
        ax.set_xticks(concurrency, [str(c) for c in concurrency])
        ax.set_xlabel("concurrent clients (mixed valid / malformed / oversized)")
        ax.set_ylabel("latency of single valid requests (ms)")
        ax.set_title("serve-reward under mixed load, MiniLM, loopback")
        ax.legend()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_load_server", description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--requests", type=int, nargs="+", default=[128, 256], help="per concurrency level")
    parser.add_argument("--samples", type=int, default=64, help="distinct HH-RLHF samples, cycled")
    args = parser.parse_args(argv)
    if len(args.requests) != len(args.concurrency):
        parser.error("--requests needs one count per --concurrency level")
    samples = make_samples(args.samples, max_response_words=60)
    workdir = Path(tempfile.mkdtemp(prefix="bench-server-load-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}/get_reward"
    cmd = [sys.executable, "-m", "moslim_plugin", "serve-reward", "--reward.model_name_or_path",
           str(make_checkpoint(workdir / "rm")), "--server.port", str(port), "--server.log_level", "warning",
           "--moslim.device", "cpu", "--server.max_samples", str(MAX_SAMPLES), "--server.max_body_mb",
           str(MAX_BODY_MB), "--server.max_batch_size", "32", "--server.chunk_size", "8"]  # fmt: skip
    proc = start_server(cmd, url, samples[0], workdir / "server.log")
    load_before = os.getloadavg()[0]  # shared CPUs: latencies scale with what else runs
    try:
        baseline = score_alone(url, samples)
        memory_before = memory_mib(proc.pid)
        levels = {}
        for concurrency, n_requests in tqdm(list(zip(args.concurrency, args.requests)), desc="load", unit="level"):
            levels[str(concurrency)] = asyncio.run(run_level(url, samples, baseline, concurrency, n_requests))
            levels[str(concurrency)] |= memory_mib(proc.pid)
        after = score_alone(url, samples)
        with urllib.request.urlopen(url.rsplit("/", 1)[0] + "/stats", timeout=30) as response:
            stats = json.loads(response.read())
        memory_after, load_after = memory_mib(proc.pid), os.getloadavg()[0]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)

    drift = max(abs(a - b) for a, b in zip(baseline, after))
    plot(levels, RESULTS_DIR / "bench_load_server.png")
    headline = [{"metric": f"errors of valid requests, {c} clients", "value": r["valid_errors"], "target": "0",
                 "met": r["valid_errors"] == 0} for c, r in levels.items()]  # fmt: skip
    headline.append({"metric": "max reward change after the load", "value": drift, "target": "<= 1e-4",
                     "met": drift <= 1e-4})  # fmt: skip
    summary = (
        "; ".join(
            f"{c} clients: {r['valid_errors']} valid errors, p50 {r['valid_p50_ms']:.0f} ms, "
            f"p99 {r['valid_p99_ms']:.0f} ms, peak RSS {r['peak_rss_mib']:.0f} MiB"
            for c, r in levels.items()
        )
        + f"; rewards after the load drift {drift:.1e}; machine load average {load_before:.1f}-{load_after:.1f}"
    )
    write_result(
        "bench_load_server",
        config=vars(args)
        | {
            "max_samples": MAX_SAMPLES,
            "max_body_mb": MAX_BODY_MB,
            "mix_of_40": MIX,
            "model": "all-MiniLM-L6-v2 + helpsteer heads (3)",
            "dtype": "fp32",
        },
        results={
            "levels": levels,
            "server_stats": stats,
            "memory_before": memory_before,
            "memory_after": memory_after,
            "reward_drift_after_load": drift,
            "load_average_1m": [load_before, load_after],
        },
        summary=summary,
        headline=headline,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
