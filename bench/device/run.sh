#!/usr/bin/env bash
# The GPU checks of this repo in ONE device call, on a bare GPU machine (python3 = Python 3.12 with torch,
# transformers, ...; no network). Needs the carried folder .gpu (run.sh, smoke.py, site.tar.xz, minilm_bf16.tar.xz);
# with .gpu_tf515 carried too, transformers 5.15.0 + tokenizers 0.22.2 (pyproject's pins) shadow the image's.
#
#   bash .gpu/run.sh          (from the repo root; results in $OUT, default .gpu/out)
#
# Steps: unpack -> versions + import smoke -> pytest -m gpu -> bash bench/gpu.sh (-> bench.run_all --doc_only if gpu.sh
# was cut). Each step runs in its own session and is killed with all its children past its limit; the whole stays
# within MOSLIM_GPU_BUDGET_S (default 430 s) plus ~25 s. A failing step does not stop the next; exit 1 if any failed.
# Env: MOSLIM_GPU_BUDGET_S, MOSLIM_GPU_TRANSFORMERS=image (ignore .gpu_tf515 even if carried).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
OUT=${OUT:-$REPO/.gpu/out}
mkdir -p "$OUT"
START=$(date +%s)
BUDGET=${MOSLIM_GPU_BUDGET_S:-430}
STEPS=()

elapsed() { echo $(( $(date +%s) - START )); }

kill_session() {  # TERM, then KILL, every process whose session id is $1 (a step started by setsid)
  python3 - "$1" <<'PY'
import os, signal, sys, time
sid = int(sys.argv[1])
def members():
    pids = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                stat = open(f"/proc/{p}/stat").read()
                if int(stat[stat.rfind(")") + 2 :].split()[3]) == sid:  # state ppid pgrp session
                    pids.append(int(p))
            except (OSError, ValueError, IndexError):
                pass
    return pids
for sig in (signal.SIGTERM, signal.SIGKILL):
    for pid in members():
        try:
            os.kill(pid, sig)
        except OSError:
            pass
    time.sleep(3)
PY
}

bounded() {  # bounded SECS NAME CMD...: run CMD in a new session; past SECS kill it and its children (rc 124)
  local secs=$1 name=$2 t0 pid rc
  shift 2
  t0=$(date +%s)
  echo
  echo "== [$name] at +$(elapsed)s, limit ${secs}s: $*"
  setsid "$@" &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    if (( $(date +%s) - t0 >= secs )); then
      echo "!! [$name] still running after ${secs}s: killing it and its children"
      kill_session "$pid"
      wait "$pid" 2>/dev/null
      STEPS+=("$name: TIMED OUT after ${secs}s")
      return 124
    fi
    sleep 1
  done
  wait "$pid"
  rc=$?
  STEPS+=("$name: rc=$rc in $(( $(date +%s) - t0 ))s")
  echo "== [$name] rc=$rc in $(( $(date +%s) - t0 ))s"
  return $rc
}

main() {
  local status=0 left
  echo "== .gpu/run.sh on $(uname -n) at $(date -u '+%Y-%m-%d %H:%M:%S UTC'), repo $REPO, budget ${BUDGET}s"
  nvidia-smi -L || { echo "!! nvidia-smi failed"; status=1; }
  echo "python3 = $(command -v python3): $(python3 -V 2>&1)"

  # 1. unpack the site folder (and the pinned transformers unless told otherwise)
  rm -rf .gpu/site .gpu/cache .gpu/data
  local archives=(.gpu/site.tar.xz .gpu/minilm_bf16.tar.xz) tf=image
  if [ -f .gpu_tf515/tf515.tar.xz ] && [ "${MOSLIM_GPU_TRANSFORMERS:-pinned}" != image ]; then
    archives+=(.gpu_tf515/tf515.tar.xz)
    tf=pinned
  fi
  python3 - "${archives[@]}" <<'PY' || { echo "!! unpacking failed"; return 1; }
import sys, tarfile, time
t = time.time()
for path in sys.argv[1:]:
    with tarfile.open(path, "r:xz") as tar:
        tar.extractall(".gpu", filter="data")
    print(f"unpacked {path}")
print(f"unpacked in {time.time() - t:.1f}s")
PY
  export PYTHONPATH="$REPO/.gpu/site:$REPO${PYTHONPATH:+:$PYTHONPATH}"
  export PYTHONUNBUFFERED=1 PY=python3 MOSLIM_CACHE="$REPO/.gpu/cache"
  export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
  export RAY_USAGE_STATS_ENABLED=0 HF_HUB_DISABLE_TELEMETRY=1
  if [ "$tf" = pinned ] && ! timeout 90 python3 -c "import transformers, tokenizers, peft; from transformers import AutoModel"
  then
    echo "!! transformers 5.15.0 does not import with this image's packages: falling back to the image's transformers"
    rm -rf .gpu/site/transformers .gpu/site/transformers-*.dist-info .gpu/site/tokenizers .gpu/site/tokenizers-*.dist-info
    tf="image (pinned failed)"
  fi
  echo "transformers: $tf"
  # bench_heads / bench_server read HH-RLHF from ../shared/data beside the checkout (not carried): the first 256 rows
  local hh
  hh="$(dirname "$REPO")/shared/data/hh-rlhf"
  if [ ! -f "$hh/helpful-base-test.jsonl.gz" ]; then
    { mkdir -p "$hh" && cp .gpu/data/hh-rlhf/* "$hh/"; } || echo "!! could not place HH-RLHF rows in $hh"
  fi
  ls -la "$hh"

  # 2. versions and an import smoke test (every import tried; failures listed, not fatal)
  bounded 90 smoke python3 .gpu/smoke.py || status=1

  # 3. the GPU-marked tests
  bounded 120 pytest-gpu python3 -m pytest -m gpu -p no:cacheprovider tests || status=1

  # 4. the GPU benchmarks (gpu.sh bounds its own steps too: 150 + 180 + 150 s), with what is left of the budget
  left=$(( BUDGET - $(elapsed) - 20 ))
  (( left < 60 )) && left=60
  bounded "$left" gpu.sh bash bench/gpu.sh
  rc=$?
  if [ $rc -ne 0 ]; then
    status=1
    if [ $rc -eq 124 ]; then  # cut before its own doc rebuild: rebuild the table from the results written so far
      bounded 30 doc-only python3 -m bench.run_all --doc_only || true
    fi
  fi

  echo
  echo "== summary (transformers: $tf), total $(elapsed)s"
  printf '   %s\n' "${STEPS[@]}"
  ls -la bench/results
  return $status
}

main 2>&1 | tee "$OUT/gpu_log.txt"
rc=${PIPESTATUS[0]}
python3 - "$OUT/gpu_results.tar.gz" bench/results docs/benchmarks.md <<'PY' 2>&1 | tee -a "$OUT/gpu_log.txt"
import os, sys, tarfile
with tarfile.open(sys.argv[1], "w:gz") as tar:
    for path in sys.argv[2:]:
        if os.path.exists(path):
            tar.add(path)
print(f"results: {sys.argv[1]} ({os.path.getsize(sys.argv[1])} bytes)")
PY
echo "== .gpu/run.sh exit $rc" | tee -a "$OUT/gpu_log.txt"
exit "$rc"
