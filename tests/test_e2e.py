"""OpenRLHF's own PPO loop end to end on this CPU machine with the MOSLIM reward (`make e2e`; the GRPO run is also
part of `make test`).

Each test submits the command a launch/*.sh script prints (`ray job submit ... -- python3 -m moslim_plugin
train_ppo_ray ...`) with the CPU overlay of tests/helpers_e2e.py to a one-node Ray cluster declaring one GPU.
OpenRLHF's driver, PPOTrainer, policy / reference / critic / reward actors (DeepSpeed ZeRO-3, bf16, all colocated,
sleep mode), the weight sync into the rollout engine, TensorBoard logging and checkpointing run unmodified. What
cannot exist without a GPU is replaced by tests/cpu_support, each replacement named there: vLLM (a transformers
engine behind vLLM's API), a few torch.cuda calls, NCCL (gloo). A run is 2 rollout batches of 8 samples, 2 optimizer
steps and a checkpoint after each.
"""

import json
import time

import pytest
from helpers_e2e import (
    SAMPLES_PER_STEP,
    STEPS,
    RayCluster,
    Run,
    base_env,
    build_assets,
    free_port,
    prepare_prompts,
    scorer_rewards,
    tensor_digest,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.e2e]
OBJECTIVES = ("helpful", "harmless")
MOSLIM_KEYS = [f"moslim/{o}/{k}" for o in OBJECTIVES for k in ("p_target", "hit", "term", "requested")]
BAD_FINGERPRINT = "0123456789abcdef"


class E2E:
    """The module's artefacts, its Ray cluster and the runs made so far (a run several tests read is made once)."""

    def __init__(self, work, assets, cluster):
        self.work, self.assets, self.cluster, self.runs = work, assets, cluster, {}

    def run(self, name, script, variant="inprocess", drop=(), drop_with_value=(), extra=(), **env) -> Run:
        if name not in self.runs:
            run = Run(self.work / "runs", name)
            script_env = run.script_env(self.assets, self.cluster, **env)
            command = run.command(script, variant, script_env, extra, drop, drop_with_value)
            self.runs[name] = run.start(command, script_env).wait()
        return self.runs[name]

    def prepared_prompts_with_a_bad_label(self):
        """prepare-prompts output (conditioned offline, as a user may) in which one row's label names another spec."""
        path = self.work / "prepared-bad.jsonl"
        if not path.exists():
            prepare_prompts(self.assets["prompts"], path, base_env(self.work))
            rows = [json.loads(line) for line in path.read_text().splitlines()]
            label = json.loads(rows[0]["label"])
            label["moslim"]["spec"] = BAD_FINGERPRINT
            rows[0]["label"] = json.dumps(label, separators=(",", ":"))
            path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        return path


@pytest.fixture(scope="module")
def e2e(tmp_path_factory, shared_data):
    work = tmp_path_factory.mktemp("e2e")
    assets = build_assets(work / "assets", shared_data)
    cluster = RayCluster(work, base_env(work))
    yield E2E(work, assets, cluster)
    cluster.stop()


# ---------------------------------------------------------------------------------------------------- checks


def check_trained(run: Run, assets, remote=False):
    """What every successful run must show: both steps logged with the MOSLIM metrics, the trainer's rewards are the
    Scorer's, the actor's weights changed, every weight sync left the engine with the actor's weights."""
    assert run.returncode == 0, run.output()[-5000:]
    scalars = run.scalars()
    keys = MOSLIM_KEYS + ["moslim/truncated"] + ["moslim/errors"] * remote
    for key in keys:
        assert set(scalars.get(f"train/{key}", {})) == set(range(1, STEPS + 1)), key

    records = run.trainer_records()
    assert [r["call"] for r in records] == [s for s in range(1, STEPS + 1) for _ in range(SAMPLES_PER_STEP)]
    good = [r for r in records if BAD_FINGERPRINT not in r["label"]]
    assert [r["reward"] for r in good] == pytest.approx(scorer_rewards(assets, good), abs=1e-5)
    for step in range(1, STEPS + 1):  # and OpenRLHF logged the mean of exactly these rewards
        rewards = [r["reward"] for r in records if r["call"] == step]
        assert scalars["train/rollout/reward_mean"][step] == pytest.approx(sum(rewards) / len(rewards), abs=1e-5)

    initial, final = tensor_digest(assets["policy"]), tensor_digest(run.save)
    assert sorted(name for name in initial if initial[name] != final[name]), "the actor's weights did not change"
    engine = run.engine_records()
    assert [r["sha256"] for r in engine if r["kind"] == "load"] == [initial]
    syncs = [r for r in engine if r["kind"] == "sync"]
    assert [s["index"] for s in syncs] == list(range(1, STEPS + 1))
    for sync in syncs:  # after sync k, the engine holds what OpenRLHF saved as the actor after step k
        assert sync["sha256"] == tensor_digest(run.save / "ckpt" / f"global_step{sync['index']}_hf"), sync["index"]
    assert syncs[-1]["sha256"] == final
    # the rollouts of step k were generated with the weights of sync k-1
    assert [r["syncs"] for r in engine if r["kind"] == "generate"] == [
        s for s in range(STEPS) for _ in range(SAMPLES_PER_STEP)
    ]
    return scalars, records


def check_loads_with_transformers(path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    ids = tokenizer("Hello", return_tensors="pt")
    assert torch.isfinite(model(**ids).logits).all()


# ---------------------------------------------------------------------------------------------------- tests


def test_grpo_in_process_trains_through_openrlhf_loop_with_the_scorer_rewards(e2e):
    run = e2e.run("grpo", "grpo")
    scalars, _ = check_trained(run, e2e.assets)
    check_loads_with_transformers(run.save)
    # --moslim.sampling subset conditioned the prompts inside OpenRLHF's dataset: every step asked for something
    for step in range(1, STEPS + 1):
        assert sum(scalars[f"train/moslim/{o}/requested"][step] for o in OBJECTIVES) > 0


@pytest.mark.e2e_matrix
@pytest.mark.parametrize("script", ["ppo", "reinforce_pp", "rloo"])
def test_each_launch_estimator_trains_through_openrlhf_loop_with_the_scorer_rewards(e2e, script):
    run = e2e.run(script, script)
    scalars, _ = check_trained(run, e2e.assets)
    if script == "ppo":  # gae: the critic (started from the policy) trained at every step too
        assert set(scalars["train/critic_loss"]) == set(range(1, STEPS + 1))
        assert (run.save / "ckpt" / "_critic" / f"global_step{STEPS}").is_dir()


def check_bad_label_counted(run, assets, log: str):
    """The prompt with the bad label gave n_samples_per_prompt samples: each got the fallback reward 0, counted in
    moslim/errors (n / 8 at its step), with its reason in `log`; every other sample was scored as usual."""
    _, records = check_trained(run, assets, remote=True)
    bad = [r for r in records if BAD_FINGERPRINT in r["label"]]
    assert len(bad) == 4 and len({r["call"] for r in bad}) == 1  # rloo / reinforce_pp: 4 samples per prompt
    assert all(r["reward"] == 0.0 and r["info"]["moslim/errors"] == 1.0 for r in bad)
    assert all(r["info"]["moslim/errors"] == 0.0 for r in records if r not in bad)
    assert run.scalars()["train/moslim/errors"][bad[0]["call"]] == pytest.approx(len(bad) / SAMPLES_PER_STEP)
    assert log.count(f"bad sample: label was made for spec fingerprint '{BAD_FINGERPRINT}'") == len(bad)


# The remote paths run with prompts conditioned offline (one row's label names another spec) and without
# --moslim.strict, so that a bad sample is counted instead of stopping the run.
REMOTE_OVERLAY = dict(drop=("--moslim.strict",), drop_with_value=("--moslim.sampling",))


@pytest.mark.e2e_matrix
def test_remote_reward_function_scores_like_the_scorer_and_counts_a_bad_label(e2e):
    prompts = e2e.prepared_prompts_with_a_bad_label()
    run = e2e.run("rloo-remote", "rloo", "remote", prompts=prompts, **REMOTE_OVERLAY)
    check_bad_label_counted(run, e2e.assets, run.output())  # the reward function logs in the rollout engine


@pytest.mark.e2e_matrix
def test_serve_reward_scores_like_the_scorer_and_counts_a_bad_label(e2e):
    import subprocess
    import urllib.request

    port, env = free_port(), base_env(e2e.work)
    env.pop("MOSLIM_CPU_E2E")
    log = open(e2e.work / "serve-reward.log", "w")
    server = subprocess.Popen(
        ["python", "-m", "moslim_plugin", "serve-reward", "--reward.model_name_or_path", str(e2e.assets["rm"]),
         "--moslim.mapping", "moslim", "--moslim.mapping_kwargs", "{}", "--server.port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, (e2e.work / "serve-reward.log").read_text()
                time.sleep(1)
        prompts = e2e.prepared_prompts_with_a_bad_label()
        url = f"http://127.0.0.1:{port}/get_reward"
        run = e2e.run("reinforce-serve", "reinforce_pp", "remote", prompts=prompts, MOSLIM_REMOTE_URL=url,
                      **REMOTE_OVERLAY)  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()
    check_bad_label_counted(run, e2e.assets, (e2e.work / "serve-reward.log").read_text())  # the server logs it


@pytest.mark.e2e_matrix
def test_a_bad_label_stops_the_in_process_run_with_its_reason(e2e):
    prompts = e2e.prepared_prompts_with_a_bad_label()
    run = e2e.run("reinforce-bad", "reinforce_pp", prompts=prompts, drop_with_value=("--moslim.sampling",))
    output = run.output()
    assert run.returncode != 0
    # the 4 samples of that prompt form one micro-batch of the reward actor
    reason = f"bad sample: label was made for spec fingerprint '{BAD_FINGERPRINT}'"
    assert f"MOSLIM reward failed for 4 of 4 samples: sample 0: {reason}" in output, output[-5000:]
    assert not (run.save / "ckpt" / "global_step2_hf").exists()


@pytest.mark.e2e_matrix
def test_a_run_killed_after_step_1_resumes_at_step_2_with_the_same_data_and_ends_like_an_uninterrupted_run(e2e):
    full = e2e.run("grpo", "grpo")
    assert full.returncode == 0, full.output()[-3000:]

    killed = Run(e2e.work / "runs", "grpo-killed")
    env = killed.script_env(e2e.assets, e2e.cluster)
    # The CPU engine holds step 2's generation (MOSLIM_E2E_HOLD_AFTER_SYNC=1): the job is stopped while step 1's
    # checkpoint is on disk and step 2 cannot finish, whatever the machine's speed.
    killed.start(killed.command("grpo", "inprocess", env, job_env={"MOSLIM_E2E_HOLD_AFTER_SYNC": "1"}), env)
    step1 = killed.save / "ckpt" / "global_step1_hf" / "tokenizer.json"  # OpenRLHF's last write of step 1's save
    deadline = time.time() + 900
    while killed.process.poll() is None and time.time() < deadline:  # (raw text: the engine may be mid-line)
        if step1.exists() and any('"kind": "hold"' in p.read_text() for p in killed.records.glob("engine-*")):
            break
        time.sleep(0.5)
    assert killed.process.poll() is None, killed.output()[-3000:]
    killed.stop_job(env)
    killed.wait()
    assert [r["syncs"] for r in killed.engine_records() if r["kind"] == "hold"][:1] == [1], killed.output()[-3000:]
    assert step1.exists() and not (killed.save / "ckpt" / "global_step2_hf").exists(), killed.output()[-3000:]

    resumed = Run(e2e.work / "runs", "grpo-resumed", save=killed.save)
    env = resumed.script_env(e2e.assets, e2e.cluster)
    resumed.start(resumed.command("grpo", "inprocess", env, extra=["--ckpt.load_enable"]), env).wait()
    assert resumed.returncode == 0, resumed.output()[-5000:]
    assert "Global step 2:" in resumed.output() and "Global step 1:" not in resumed.output()

    # Step 1 ran as in the uninterrupted run; the resumed run made step 2 from the same prompts and weights.
    full_records = full.trainer_records()
    assert killed.trainer_records()[:SAMPLES_PER_STEP] == full_records[:SAMPLES_PER_STEP]
    step2 = [r for r in full_records if r["call"] == 2]
    again = resumed.trainer_records()
    assert [(r["prompt"], r["label"], r["response"]) for r in again] == [
        (r["prompt"], r["label"], r["response"]) for r in step2
    ]
    assert [r["reward"] for r in again] == pytest.approx([r["reward"] for r in step2], abs=1e-6)
    # The resumed engine first received step 1's weights from the checkpoint, then step 2's.
    syncs = [r for r in resumed.engine_records() if r["kind"] == "sync"]
    assert [s["sha256"] for s in syncs] == [tensor_digest(killed.save / "ckpt" / f"global_step{k}_hf") for k in (1, 2)]

    # Final metrics as in the uninterrupted run, within float noise (bf16 weights; micro-batch order may differ).
    ours, theirs = resumed.scalars(), full.scalars()
    for key in ["rollout/reward_mean", "policy_loss", "kl", "actor_lr", "actor_grad_norm", *MOSLIM_KEYS]:
        assert ours[f"train/{key}"][2] == pytest.approx(theirs[f"train/{key}"][2], rel=2e-2, abs=1e-4), key
    import torch
    from safetensors.torch import load_file

    mine, reference = load_file(resumed.save / "model.safetensors"), load_file(full.save / "model.safetensors")
    for name, tensor in reference.items():
        torch.testing.assert_close(mine[name].float(), tensor.float(), rtol=0, atol=2e-2, msg=name)
