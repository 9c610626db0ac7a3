"""OpenRLHF's own PPO loop (train_ppo_ray through `ray job submit`) on CPU, as launch/*.sh submits it.

Shared by tests/test_e2e.py and the benches. What runs is the command `DRY_RUN=1 bash launch/<script>.sh` prints,
plus `CPU_OVERLAY` flags appended (argparse keeps the last value) and the job's env pointing the scripts' variables at
small real artefacts; `tests/cpu_support` (on PYTHONPATH of every process, with MOSLIM_CPU_E2E=1) replaces what
cannot exist on a CPU machine: vLLM (a transformers engine with vLLM's API) and a few torch.cuda calls (see its
sitecustomize.py). Everything else, OpenRLHF's trainer, actors, DeepSpeed, Ray placement, experience maker, losses,
estimators, dataset, logging and checkpointing, runs unmodified.

Artefacts (`build_assets`): the policy is SmolLM2-135M-Instruct cut to its first `POLICY_LAYERS` layers (real
weights, bf16, as OpenRLHF trains it), the reward model a MOSLIM RM trained by `train-rm` on HH-RLHF ratings with the
MiniLM backbone for a few steps (real, not good), the prompts the demo's bundled questions.
"""

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CPU_SUPPORT = REPO / "tests" / "cpu_support"
POLICY_LAYERS = 2
SPEC = "hh"
SAMPLES_PER_STEP = 8  # rollout.batch_size x n_samples_per_prompt: one optimizer step per rollout batch
STEPS = 2
RECORD_ENV = "MOSLIM_E2E_RECORD"  # tests/cpu_support: where the engines and the trainer record what they did

# Appended to every launch command, each with why it differs from the GPU script.
CPU_OVERLAY = [
    "--ds.attn_implementation", "sdpa",  # flash-attn is CUDA-only
    "--vllm.sync_backend", "gloo",  # NCCL / CUDA IPC are CUDA-only: OpenRLHF's broadcast path with a gloo group
    "--rollout.max_new_tokens", "24", "--data.max_len", "192",  # CPU-sized rollouts
    "--train.micro_batch_size", "4", "--rollout.micro_batch_size", "4", "--train.batch_size", str(SAMPLES_PER_STEP),
    "--ckpt.save_steps", "1",  # a checkpoint (DeepSpeed + HF) at every step: weights per step, resume
    "--actor.adam.lr", "1e-5",  # 2 steps instead of thousands: with 5e-7, bf16 weights barely move
    "--actor.lr_warmup_ratio", "0",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(work: Path, cpu: bool = True) -> dict:
    """The environment of the Ray cluster and of the commands: one thread each, no hub, and on CPU the stand-ins
    (MOSLIM_CPU_E2E) with DeepSpeed's CPU Adam built once (`deepspeed_ops_dir`). `cpu=False` (a GPU with real vLLM)
    keeps only tests/cpu_support's observers."""
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join([str(CPU_SUPPORT), str(REPO), *filter(None, [env.get("PYTHONPATH")])]),
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"),
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        RAY_DEDUP_LOGS="0",
        RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="0",
    )
    if cpu:
        env.update(MOSLIM_CPU_E2E="1", TORCH_EXTENSIONS_DIR=str(deepspeed_ops_dir()))
    env.pop("RAY_ADDRESS", None)
    return env


def deepspeed_ops_dir() -> Path:
    """A TORCH_EXTENSIONS_DIR kept under the MOSLIM cache: DeepSpeed's CPU FusedAdam, which the actor's optimizer
    needs, is a C++ JIT build of 1-2 min, done here once per DeepSpeed/torch version behind a file lock. A build
    killed half-way leaves torch's own `lock` file, which would make every later build wait forever: under our lock
    nobody else is building, so a leftover one is removed."""
    import fcntl

    import deepspeed
    import torch

    from moslim_plugin.demo.real_models import cache_dir

    path = cache_dir() / "torch-extensions" / f"deepspeed-{deepspeed.__version__}-torch-{torch.__version__}"
    path.mkdir(parents=True, exist_ok=True)
    with open(path / ".moslim.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (path / "fused_adam" / "fused_adam.so").is_file():
            (path / "fused_adam" / "lock").unlink(missing_ok=True)
            build = "from deepspeed.accelerator import get_accelerator; get_accelerator().create_op_builder(%r).load()"
            build %= "FusedAdamBuilder"
            env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(path)}
            subprocess.run([sys.executable, "-c", build], env=env, check=True, capture_output=True, timeout=1200)
    return path


# ---------------------------------------------------------------------------------------------------- artefacts


def cut_policy(source, target: Path, layers: int = POLICY_LAYERS) -> Path:
    """SmolLM2 with its first `layers` decoder layers (real weights), saved in bf16 with its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    model.model.layers = model.model.layers[:layers]
    model.config.num_hidden_layers = layers
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:layers]
    model.to(torch.bfloat16).save_pretrained(target, safe_serialization=True)
    AutoTokenizer.from_pretrained(source).save_pretrained(target)
    return target


def train_rm(target: Path, shared_data: Path, work: Path, env: dict, backbone=None, device="cpu", rows_per_subset=48,
             steps=6):  # fmt: skip
    """`moslim-openrlhf prepare-ratings` on HH-RLHF (helpful and harmless) then `train-rm` on `backbone` (default
    MiniLM): a real MOSLIM checkpoint after a few optimizer steps."""
    import gzip

    from moslim_plugin.demo.real_models import minilm_path

    heads = []
    for subset in ("helpful", "harmless"):  # the file name tells prepare-ratings the subset
        with gzip.open(shared_data / "hh-rlhf" / f"{subset}-base-test.jsonl.gz", "rt") as f:
            heads.append(work / f"{subset}-base-head.jsonl")
            heads[-1].write_text("".join(next(f) for _ in range(rows_per_subset)))
    data = work / "ratings.jsonl"
    cli(env, "prepare-ratings", "--data.dataset", ",".join(map(str, heads)), "--moslim.format", "hh_rlhf",
        "--moslim.spec", SPEC, "--moslim.output", data)  # fmt: skip
    cli(env, "train-rm", "--model.model_name_or_path", backbone or minilm_path(), "--moslim.spec", SPEC,
        "--data.dataset", data,
        "--train.max_steps", steps, "--train.batch_size", 8, "--train.micro_batch_size", 8, "--data.max_len", 128,
        "--adam.lr", "1e-4", "--ckpt.output_dir", target, "--ckpt.max_num", 0, "--device", device)  # fmt: skip
    return target


def cli(env, *argv):
    run = subprocess.run([sys.executable, "-m", "moslim_plugin", *map(str, argv)], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=900)  # fmt: skip
    if run.returncode:
        raise RuntimeError(f"moslim-openrlhf {argv[0]} failed:\n{(run.stdout + run.stderr)[-4000:]}")
    return run.stdout


def write_prompts(target: Path, count: int) -> Path:
    """The demo's bundled questions as OpenRLHF prompt rows ({"input": question})."""
    questions = (REPO / "moslim_plugin/demo/prompts/prompts_train.txt").read_text().splitlines()
    target.write_text("".join(json.dumps({"input": q}) + "\n" for q in questions[:count]))
    return target


def prepare_prompts(prompts: Path, target: Path, env: dict) -> Path:
    """`moslim-openrlhf prepare-prompts`: the prompts conditioned offline, as launch/common.sh's on-the-fly
    sampling would (subset, seed 42); for runs without --moslim.sampling."""
    cli(env, "prepare-prompts", "--data.dataset", prompts, "--moslim.spec", SPEC, "--moslim.output", target,
        "--moslim.sampling", "subset", "--moslim.seed", 42)  # fmt: skip
    return target


def build_assets(work: Path, shared_data: Path) -> dict:
    from moslim_plugin.demo.real_models import smollm2_path

    work.mkdir(parents=True, exist_ok=True)
    env = base_env(work)
    env.pop("MOSLIM_CPU_E2E")  # building the artefacts needs no stand-in
    return {
        "policy": cut_policy(smollm2_path(), work / "policy"),
        "rm": train_rm(work / "rm", shared_data, work, env),
        "prompts": write_prompts(work / "prompts.jsonl", 64),
    }


# ---------------------------------------------------------------------------------------------------- Ray


class RayCluster:
    """A one-node Ray cluster declaring `gpus` GPUs (OpenRLHF's placement groups need GPU resources), with a dashboard
    for `ray job submit` (`address` is then the dashboard's; without one, the GCS's, for a driver started directly).
    Its own temp dir and ports; stopped by killing its process group, never `ray stop` (which would stop every Ray
    cluster on the machine)."""

    def __init__(self, work: Path, env: dict, gpus: int = 1, cpus: int = 8, dashboard: bool = True):
        self.env = dict(env)
        self.temp = Path(tempfile.mkdtemp(prefix="moslim-ray-"))  # short: Ray's socket paths have a length limit
        gcs, dashboard_port = free_port(), free_port()
        self.log = open(work / "ray-head.log", "w")
        command = ["ray", "start", "--head", "--block", f"--port={gcs}", f"--num-cpus={cpus}", f"--num-gpus={gpus}",
                   f"--include-dashboard={str(dashboard).lower()}", f"--dashboard-port={dashboard_port}",
                   "--dashboard-host=127.0.0.1", f"--temp-dir={self.temp}", "--disable-usage-stats"]  # fmt: skip
        self.process = subprocess.Popen(command, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)  # fmt: skip
        self.address = f"http://127.0.0.1:{dashboard_port}" if dashboard else f"127.0.0.1:{gcs}"
        self._wait_ready()

    def _wait_ready(self, timeout=120):
        import urllib.request

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.process.returncode}: see {self.log.name}")
            if self.address.startswith("http"):
                try:
                    with urllib.request.urlopen(f"{self.address}/api/version", timeout=2):
                        return
                except OSError:
                    pass
            else:
                status = ["ray", "status", f"--address={self.address}"]
                if subprocess.run(status, env=self.env, capture_output=True, timeout=60).returncode == 0:
                    return
            time.sleep(1)
        raise TimeoutError(f"the Ray cluster at {self.address} did not come up in {timeout} s")

    def stop(self):
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.log.close()


# ---------------------------------------------------------------------------------------------------- runs


def launch_command(script: str, variant: str, env: dict) -> list[str]:
    """The exact command `launch/<script>.sh <variant>` submits (its DRY_RUN output)."""
    run = subprocess.run(["bash", str(REPO / "launch" / f"{script}.sh"), variant], env={**env, "DRY_RUN": "1"},
                         capture_output=True, text=True, timeout=120, cwd=REPO)  # fmt: skip
    if run.returncode:
        raise RuntimeError(f"launch/{script}.sh {variant} (DRY_RUN) failed: {run.stderr[-2000:]}")
    return run.stdout.split("\0")[:-1]


def flag_value(command: list[str], flag: str):
    return command[len(command) - 1 - command[::-1].index(flag) + 1] if flag in command else None


def drop_flags(command: list[str], *flags: str, with_value=()) -> list[str]:
    """`command` without the given switches and the given flags with their value."""
    out, skip = [], False
    for item in command:
        if skip:
            skip = False
        elif item in with_value:
            skip = True
        elif item not in flags:
            out.append(item)
    return out


class Run:
    """One training job: its folder, its command, and what it left on disk."""

    def __init__(self, root: Path, name: str, save: Path | None = None):
        self.dir = root / name
        self.save = save or self.dir / "save"  # a resumed run continues in the killed run's folder
        self.records = self.dir / "records"
        self.records.mkdir(parents=True, exist_ok=True)
        self.log = self.dir / "job.log"
        self.returncode = None

    def script_env(self, assets: dict, cluster: RayCluster, **extra) -> dict:
        env = dict(cluster.env)
        env.update(RAY_ADDRESS=cluster.address, GPUS="1", POLICY=str(assets["policy"]), MOSLIM_RM=str(assets["rm"]),
                   MOSLIM_SPEC=SPEC, PROMPTS=str(extra.pop("prompts", assets["prompts"])),
                   SAVE_PATH=str(self.save))  # fmt: skip
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def command(self, script, variant, env, extra=(), drop=(), drop_with_value=(), steps=STEPS, overlay=CPU_OVERLAY,
                samples=SAMPLES_PER_STEP, submit=True, job_env=None):  # fmt: skip
        """launch/<script>.sh's command with `overlay` (default: the CPU one), rollout batches of `samples` samples
        (n_samples_per_prompt stays the script's) and prompts for `steps` steps; the job's runtime env gains the
        record folder and `job_env` (the job's processes see only their runtime env, not this process's).
        `submit=False`: the command after `ray job submit ... --`, for a cluster without a dashboard (then the
        cluster's env must hold MOSLIM_E2E_RECORD)."""
        command = launch_command(script, variant, env)
        n = int(flag_value(command, "--rollout.n_samples_per_prompt"))
        prompts_per_step = samples // n
        overlay = [*overlay, "--rollout.batch_size", str(prompts_per_step),
                   "--data.max_samples", str(prompts_per_step * steps)]  # fmt: skip
        entry = command.index("--")  # `ray job submit ... -- python3 -m moslim_plugin train_ppo_ray ...`
        head = []
        for item in command[:entry]:
            if item.startswith("--runtime-env-json="):
                runtime_env = json.loads(item.split("=", 1)[1])
                runtime_env.setdefault("env_vars", {}).update({RECORD_ENV: str(self.records), **(job_env or {})})
                item = "--runtime-env-json=" + json.dumps(runtime_env)
            head.append(item)
        head += ["--submission-id", f"{self.dir.name}-{os.getpid()}-{int(time.time())}"]
        command = head + command[entry:] if submit else command[entry + 1 :]
        return drop_flags(command, *drop, with_value=drop_with_value) + overlay + list(extra)

    def start(self, command, env):
        self.started = time.time()
        self.submission_id = flag_value(command, "--submission-id")  # None for a driver started directly
        (self.dir / "command.txt").write_text(shlex.join(command) + "\n")
        self._log = open(self.log, "w")
        self.process = subprocess.Popen(command, env=env, cwd=self.dir, stdout=self._log, stderr=subprocess.STDOUT)
        return self

    def wait(self, timeout=1200):
        try:
            self.returncode = self.process.wait(timeout=timeout)
        finally:
            self._log.close()
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop_job(self, env):
        """`ray job stop` (SIGTERM then SIGKILL to the driver, whose actors die with it), or SIGTERM to a driver
        started directly."""
        if self.submission_id is None:
            self.process.terminate()
        else:
            subprocess.run(["ray", "job", "stop", self.submission_id], env=env, capture_output=True, timeout=120)

    # ---- what the run left on disk

    def scalars(self) -> dict:
        """OpenRLHF's TensorBoard output: {tag: {step: value}} from the event files this run wrote (a resumed run
        shares its folder with the killed one)."""
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        out = {}
        for events in sorted((self.save / "tensorboard").rglob("events.out.tfevents.*")):
            if events.stat().st_mtime < self.started:
                continue
            accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
            accumulator.Reload()
            for tag in accumulator.Tags()["scalars"]:
                for event in accumulator.Scalars(tag):
                    out.setdefault(tag, {})[event.step] = event.value
        return out

    def engine_records(self) -> list[dict]:
        return [json.loads(line) for path in sorted(self.records.glob("engine-*.jsonl")) for line in path.open()]

    def trainer_records(self, kind="trainer") -> list[dict]:
        """The PPO trainer's records: "trainer" (one per sample) or "timing" (the reward model's time per batch)."""
        return [json.loads(line) for path in sorted(self.records.glob(f"{kind}-*.jsonl")) for line in path.open()]


def scorer_rewards(assets, records, **scorer_kwargs) -> list[float]:
    """The Scorer's rewards for the recorded (prompt, response, label)s, read independently of the reward path: the
    question is the prompt file's row the chat template put in the user turn, the response the policy's tokens up to
    its end-of-turn token, the request the label's."""
    from transformers import AutoTokenizer

    from moslim_plugin.core.directives import label_to_request
    from moslim_plugin.core.scorer import Scorer
    from moslim_plugin.core.spec import load_spec

    spec, tokenizer = load_spec(SPEC), AutoTokenizer.from_pretrained(assets["policy"])
    questions = [json.loads(line)["input"] for line in assets["prompts"].read_text().splitlines()]
    ends = {tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}

    def question(prompt):
        (found,) = [q for q in questions if f"<|im_start|>user\n{q}<|im_end|>" in prompt]
        return found

    def response(ids):
        cut = next((i for i, t in enumerate(ids) if t in ends), len(ids))
        return tokenizer.decode(ids[:cut]).strip()

    # launch/common.sh's MOSLIM_MAPPING default
    scorer = Scorer.from_pretrained(assets["rm"], mapping="moslim", **scorer_kwargs)
    result = scorer.score(
        [question(r["prompt"]) for r in records],
        [response(r["response"]) for r in records],
        [label_to_request(spec, r["label"]) for r in records],
    )
    return result.rewards.tolist()


def tensor_digest(folder) -> dict:
    """{name: sha256 of the tensor's bytes in its own dtype} of a model folder's safetensors: the digest the CPU
    engine (tests/cpu_support/engine/vllm) records of its weights, so equal digests mean bit-equal weights."""
    import hashlib

    import torch
    from safetensors.torch import load_file

    tensors = load_file(Path(folder) / "model.safetensors")
    return {
        name: hashlib.sha256(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()
        for name, t in tensors.items()
    }
