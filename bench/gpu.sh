#!/usr/bin/env bash
# The GPU variant of the benchmarks (bench_heads, bench_server) plus the in-process reward-actor check, as ONE script
# for a single GPU with no network: random-init SmolLM2-135M / Qwen2-0.5B shapes in bf16 for the reward-model ratios, the
# MiniLM RM behind both HTTP servers. Each step is bounded by `timeout` so the whole stays under ~8 minutes; results
# go to bench/results/*.json as on CPU, then the table in docs/benchmarks.md is rebuilt.
# Usage (repository root, after `make setup` or on a cluster image with the plugin installed): bash bench/gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
python_has_cuda=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))")
[ "$python_has_cuda" = 1 ] || { echo "bench/gpu.sh: no CUDA device visible to $PY" >&2; exit 2; }
status=0
run() { echo "== $*"; timeout "$1" "$PY" "${@:2}" || { echo "!! failed or timed out: ${*:2}" >&2; status=1; }; }
run 150 -m bench.gpu_check_reward_actor
run 240 -m bench.bench_heads --device cuda --repeats 5
run 150 -m bench.bench_server --device cuda --repeats 1 --no_profile
"$PY" -m bench.run_all --doc_only
exit $status
