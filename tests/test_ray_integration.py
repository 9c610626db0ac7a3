"""The plugin inside a real local Ray cluster with OpenRLHF's real Ray pieces, on CPU.

vLLM cannot be installed here: `openrlhf.trainer.ray` imports it at module level, so
`moslim_plugin/integration/vllm_stub` (three names, no generation) is put on the path of this process and of every Ray
worker. The cluster advertises one fake GPU;
each actor takes a fraction of it, as OpenRLHF's colocation does. One cluster serves the whole module: starting it
and each actor group cost ~10-25 s on 2 shared cores, most of this module's ~2 minutes.
"""

import gzip
import importlib.util
import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace as NS

import pytest
from helpers_reward import (
    MIXED_REQUESTS,
    MIXED_RESPONSES,
    MIXED_SPEC,
    QUESTIONS,
    RULES_HITS,
    RULES_REQUESTS,
    RULES_REWARDS,
    RULES_SPEC,
    chat_prompt,
    save_minilm_rm,
    write_rules_spec,
)

from moslim_plugin.integration import activate, dataset_hook, launcher, patches
from moslim_plugin.integration.vllm_stub import PATH as VLLM_STUB_PATH

# Every test here starts a local Ray cluster or a driver subprocess (~10-25 s each on 2 cores).
pytestmark = pytest.mark.slow

VLLM_STUB = Path(VLLM_STUB_PATH)
DIFF = Path(__file__).parent.parent / "patches" / "openrlhf-0.11.2-moslim.diff"
NEEDS_STUB = importlib.util.find_spec("vllm") is None


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    saved_path = os.environ.get("PYTHONPATH")
    if NEEDS_STUB:
        sys.path.insert(0, str(VLLM_STUB))
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(VLLM_STUB), saved_path]))  # workers inherit it
    # Functions and classes of this module run in the workers: ship them by value (the module is not importable there).
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    # The runtime env the launcher declares: every worker runs the plugin's activation. This process does not.
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, runtime_env=launcher.driver_runtime_env())
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
    if NEEDS_STUB:  # leave no trace: later tests must not mistake the stub for an installed vLLM
        sys.path.remove(str(VLLM_STUB))
        os.environ.pop("PYTHONPATH") if saved_path is None else os.environ.__setitem__("PYTHONPATH", saved_path)
        for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
            del sys.modules[name]


def probe_worker():
    """What a fresh Ray worker looks like after the setup hook, then after OpenRLHF imports its dataset module."""
    import sys

    from moslim_plugin.integration import activate, patches

    before = {"torch": "torch" in sys.modules, "openrlhf": "openrlhf" in sys.modules, "applied": patches.applied()}
    activate.activate_all()  # again: idempotent
    from openrlhf.datasets.prompts_dataset import PromptDataset

    return before, getattr(PromptDataset.__init__, "__moslim_patch__", None), patches.applied()


@pytest.mark.integration
def test_the_worker_setup_hook_activates_the_patches_in_ray_workers_without_importing_torch(ray_cluster):
    import ray

    before, patched, applied = ray.get(ray.remote(num_cpus=0.1)(probe_worker).remote())
    assert before == {"torch": False, "openrlhf": False, "applied": []}  # activation alone is cheap
    assert patched == "prompt_dataset" and applied == ["prompt_dataset"]  # applied once, when OpenRLHF imported it


def hh_samples(shared_data, n):
    """(question, response) pairs: first human turn and the chosen assistant reply of real HH-RLHF dialogues."""
    pairs = []
    with gzip.open(shared_data / "hh-rlhf" / "helpful-base-test.jsonl.gz", "rt") as f:
        for line in itertools.islice(f, n):
            chosen = json.loads(line)["chosen"]
            question = chosen.split("\n\nAssistant:")[0].split("\n\nHuman: ", 1)[1].strip()
            response = chosen.split("\n\nAssistant:")[1].split("\n\nHuman:")[0].strip()
            pairs.append((question, response))
    return pairs


def experience_of(tokenizer, prompt, label, response):
    """One rollout sample, built as OpenRLHF's SamplesGenerator builds it from a vLLM output."""
    import torch
    from openrlhf.trainer.ppo_utils.experience import Experience

    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    sequences = torch.tensor(prompt_ids + response_ids)
    action_mask = torch.zeros(len(sequences), dtype=torch.long)
    action_mask[len(prompt_ids) :] = 1
    return Experience(
        sequences=sequences.unsqueeze(0),
        attention_mask=torch.ones_like(sequences).unsqueeze(0),
        action_mask=action_mask[1:].unsqueeze(0),
        prompts=[prompt],
        labels=[label],
        response_length=torch.tensor([len(response_ids)]),
        truncated=torch.tensor([False]),
        total_length=torch.tensor([float(len(sequences))]),
        info={"response_clip_ratio": torch.tensor([False])},
    )


def ppo_args(actor_path, rm_path, spec="hh"):
    """OpenRLHF's hierarchized args as train_ppo_ray builds them (the fields the experience maker reads)."""
    args = NS(
        actor=NS(model_name_or_path=str(actor_path), num_nodes=1, num_gpus_per_node=1),
        reward=NS(model_name_or_path=str(rm_path), remote_url=None, clip_range=(-10, 10), overlong_buffer_len=None,
                  stop_properly_penalty_coef=None, normalize_enable=False, offload=False),
        data=NS(apply_chat_template=True, label_key="label", input_key="input"),
        train=NS(seed=42, full_determinism_enable=False, micro_batch_size=2, batch_size=8, agent_func_path=None,
                 colocate_all=False, colocate_actor_ref=False, colocate_critic_reward=False,
                 dynamic_batch_enable=False),
        rollout=NS(micro_batch_size=4, n_samples_per_prompt=2),
        ds=NS(zero_stage=0, param_dtype="bf16", ring_attn_size=1, tensor_parallel_size=1, packing_samples=False),
        algo=NS(advantage=NS(estimator="reinforce_baseline", gamma=1.0, lambd=1.0, no_std_norm=False),
                kl=NS(use_loss=False, estimator="k1")),
    )  # fmt: skip
    flags = ["--moslim.spec", str(spec), "--moslim.sampling", "subset", "--moslim.seed", "3"]
    args.moslim = launcher.check_moslim_args(launcher.split_argv(flags)[0], args)
    return args


@pytest.fixture(scope="module")
def moslim_rm(tmp_path_factory, minilm_dir):
    from transformers import AutoTokenizer

    from moslim_plugin.core.rm import MultiHeadRewardModel
    from moslim_plugin.core.spec import load_spec

    path = tmp_path_factory.mktemp("rm")
    model = MultiHeadRewardModel.from_backbone(minilm_dir, load_spec("hh"))
    model.save_pretrained(path, tokenizer=AutoTokenizer.from_pretrained(minilm_dir))
    return path


@pytest.fixture(scope="module")
def reward_group(ray_cluster, moslim_rm, smollm2_dir):
    from openrlhf.trainer.ray.launcher import RayActorGroup
    from openrlhf.utils import get_strategy

    from moslim_plugin.integration.ray_reward import MoslimRewardModelActor

    args = ppo_args(smollm2_dir, moslim_rm)
    strategy = get_strategy(args)
    group = RayActorGroup(1, 1, MoslimRewardModelActor, num_gpus_per_actor=0.25)
    import ray

    ray.get(group.async_init_model_from_pretrained(strategy, args.reward.model_name_or_path))
    return group, strategy


def _zero_log_prob_actor_class():
    # Stands in for OpenRLHF's PolicyModelActor, whose forward needs CUDA: the experience maker always asks the
    # policy for log-probs; their value does not matter to the rewards under test.
    import ray
    import torch
    from openrlhf.trainer.ray.launcher import BaseModelActor

    class ZeroLogProbActor(BaseModelActor):
        def init_model_from_pretrained(self, strategy):
            self.strategy = strategy

        def forward(self, sequences, action_mask, attention_mask, **kwargs):
            return torch.zeros(action_mask.shape, dtype=torch.float32)

        def empty_cache(self):  # the stock one calls torch.cuda (colocated runs)
            pass

    return ray.remote(num_gpus=1)(ZeroLogProbActor)


def make_experiences_in_worker(policy, reward, strategy, samples):
    """What OpenRLHF's PPOTrainer actor does with a rollout batch, in a Ray worker where only the setup hook ran."""
    from openrlhf.trainer.ppo_utils.experience_maker import RemoteExperienceMaker
    from openrlhf.trainer.ppo_utils.kl_controller import FixedKLController
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(strategy.args.actor.model_name_or_path)
    maker = RemoteExperienceMaker(policy, None, reward, None, FixedKLController(0.0), strategy, tokenizer)
    experiences = maker.make_experience_batch(samples)
    patched = getattr(RemoteExperienceMaker.make_experience, "__moslim_patch__", None)
    return patched, [(e.rewards, e.info, e.advantages) for e in experiences]


@pytest.fixture(scope="module")
def policy_and_samples(reward_group, shared_data):
    """The stand-in policy group and a rollout batch (4 HH prompts x 2 samples) with the inputs the scorer sees."""
    import ray
    from openrlhf.trainer.ray.launcher import RayActorGroup
    from transformers import AutoTokenizer

    from moslim_plugin.core.directives import label_to_request
    from moslim_plugin.data.datasets import condition_row

    _, strategy = reward_group
    args = strategy.args
    policy = RayActorGroup(1, 1, _zero_log_prob_actor_class(), num_gpus_per_actor=0.25)
    ray.get(policy.async_init_model_from_pretrained(strategy))
    tokenizer = AutoTokenizer.from_pretrained(args.actor.model_name_or_path)  # the policy's (SmolLM2), not the RM's
    spec, sampler = dataset_hook.moslim_sampler(args.moslim)
    samples, expected_inputs = [], []
    for index, (question, response) in enumerate(hh_samples(shared_data, 4)):
        row = condition_row({"input": question}, spec, sampler, index, "input", "label", "system")
        prompt = tokenizer.apply_chat_template(row["input"], tokenize=False, add_generation_prompt=True)
        for _ in range(args.rollout.n_samples_per_prompt):
            samples.append(experience_of(tokenizer, prompt, row["label"], response))
            expected_inputs.append((question, response, label_to_request(spec, row["label"])))
    return policy, samples, expected_inputs


@pytest.mark.integration
def test_openrlhfs_experience_maker_with_the_moslim_reward_actor_gives_the_scorers_rewards(
    reward_group, moslim_rm, policy_and_samples
):
    import ray
    import torch

    from moslim_plugin.core.scorer import Scorer
    from moslim_plugin.core.spec import load_spec

    group, strategy = reward_group
    args = strategy.args
    policy, samples, expected_inputs = policy_and_samples
    spec = load_spec(args.moslim.spec_dict)

    task = ray.remote(num_cpus=0.1)(make_experiences_in_worker)
    patched, experiences = ray.get(task.remote(policy, group, strategy, samples))
    assert patched == "make_experience"

    direct = Scorer.from_pretrained(moslim_rm).score(*map(list, zip(*expected_inputs)))
    got = torch.cat([info["reward"] for _, info, _ in experiences])
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, direct.rewards, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([r for r, _, _ in experiences]), direct.rewards, atol=1e-5, rtol=1e-5)
    # Per-objective diagnostics reach the experience info (the trainer logs every info key).
    p_helpful = torch.cat([info["moslim/helpful/p_target"] for _, info, _ in experiences])
    requested = direct.requested[:, spec.index("helpful")]
    assert requested.any()
    expected_p = direct.probs[:, 0].gather(-1, direct.targets[:, :1].clamp_min(0)).squeeze(-1)
    torch.testing.assert_close(p_helpful[requested], expected_p[requested], atol=1e-5, rtol=1e-5)
    # OpenRLHF's estimator then ran on these rewards.
    assert all(torch.isfinite(advantages).all() for _, _, advantages in experiences)

    # Colocated models (shared GPUs): the reward model finishes and frees its cache first; same rewards.
    strategy.args.train.colocate_all = True
    _, colocated = ray.get(task.remote(policy, group, strategy, samples))
    strategy.args.train.colocate_all = False
    torch.testing.assert_close(torch.cat([r for r, _, _ in colocated]), direct.rewards, atol=1e-5, rtol=1e-5)


@pytest.mark.integration
@pytest.mark.parametrize("source", ["mixed", "rules only"])
def test_the_in_process_reward_actor_scores_rule_objectives_exactly_beside_learned_ones(
    ray_cluster, policy_and_samples, minilm_dir, smollm2_dir, tmp_path, source
):
    """A checkpoint with one head beside two rules, and a spec file of rules only as --reward.model_name_or_path (no
    model loaded at all): OpenRLHF's experience maker gets the Scorer's rewards, the exact ones for rules only."""
    import ray
    import torch
    import yaml
    from openrlhf.trainer.ray.launcher import RayActorGroup
    from openrlhf.utils import get_strategy
    from transformers import AutoTokenizer

    from moslim_plugin.core.directives import request_to_label
    from moslim_plugin.core.scorer import Scorer
    from moslim_plugin.integration.ray_reward import MoslimRewardModelActor

    if source == "mixed":
        spec, requests, spec_file = MIXED_SPEC, MIXED_REQUESTS, tmp_path / "mixed.yaml"
        spec_file.write_text(yaml.safe_dump(MIXED_SPEC.to_dict()))
        rm_path = save_minilm_rm(tmp_path / "rm", minilm_dir, MIXED_SPEC)
    else:
        spec, requests = RULES_SPEC, RULES_REQUESTS
        spec_file = rm_path = write_rules_spec(tmp_path / "rules.yaml")
    strategy = get_strategy(ppo_args(smollm2_dir, rm_path, spec_file))
    group = RayActorGroup(1, 1, MoslimRewardModelActor, num_gpus_per_actor=0.25)
    try:
        ray.get(group.async_init_model_from_pretrained(strategy, str(rm_path)))
        tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
        samples = [
            experience_of(tokenizer, chat_prompt(tokenizer, q, rq, spec), request_to_label(spec, rq), r)
            for q, r, rq in zip(QUESTIONS, MIXED_RESPONSES, requests)
        ]
        task = ray.remote(num_cpus=0.1)(make_experiences_in_worker)
        _, experiences = ray.get(task.remote(policy_and_samples[0], group, strategy, samples))
    finally:
        for actor in group._actor_handlers:  # its share of the one fake GPU goes back to the module's other groups
            ray.kill(actor)
    got = torch.cat([info["reward"] for _, info, _ in experiences])
    expected = Scorer.from_pretrained(rm_path).score(QUESTIONS, MIXED_RESPONSES, requests)
    torch.testing.assert_close(got, expected.rewards, atol=1e-5, rtol=1e-5)
    for name, hits in RULES_HITS.items():
        assert torch.cat([info[f"moslim/{name}/hit"] for _, info, _ in experiences]).tolist() == hits
    if source == "rules only":
        assert got.tolist() == pytest.approx(RULES_REWARDS, abs=1e-6)


@pytest.mark.integration
@pytest.mark.slow
def test_openrlhf_with_the_upstream_diff_and_no_runtime_patch_gives_the_same_rewards(
    reward_group, policy_and_samples, tmp_path
):
    """patches/openrlhf-0.11.2-moslim.diff applied to a copy of the installed OpenRLHF, imported first by a Ray worker
    in which MOSLIM_RUNTIME_PATCHES=0: OpenRLHF's own make_experience, with the diff's extension points, gives the
    rewards and diagnostics of the runtime-patched path."""
    import ray
    import torch

    upstream_openrlhf(tmp_path)
    group, strategy = reward_group
    policy, samples, _ = policy_and_samples
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ["PYTHONPATH"]]), patches.RUNTIME_ENV: "0"}
    upstream_task = ray.remote(num_cpus=0.1, runtime_env={"env_vars": env})(make_experiences_in_worker)
    patched, upstream = ray.get(upstream_task.remote(policy, group, strategy, samples))
    runtime_patch, runtime = ray.get(ray.remote(num_cpus=0.1)(make_experiences_in_worker).remote(
        policy, group, strategy, samples))  # fmt: skip
    assert (patched, runtime_patch) == (None, "make_experience")  # the first worker ran unpatched OpenRLHF
    torch.testing.assert_close(torch.cat([r for r, _, _ in upstream]), torch.cat([r for r, _, _ in runtime]))
    for (_, info_upstream, _), (_, info_runtime, _) in zip(upstream, runtime):
        moslim_keys = sorted(key for key in info_runtime if key.startswith("moslim/"))
        assert moslim_keys and moslim_keys == sorted(key for key in info_upstream if key.startswith("moslim/"))
        for key in moslim_keys:
            torch.testing.assert_close(info_upstream[key], info_runtime[key])


def upstream_openrlhf(root: Path) -> None:
    """root/openrlhf: a copy of the installed OpenRLHF with patches/openrlhf-0.11.2-moslim.diff applied."""
    shutil.copytree(Path(importlib.util.find_spec("openrlhf").origin).parent, root / "openrlhf",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    subprocess.run(["patch", "-p1", "-s", "-i", str(DIFF)], cwd=root, check=True)


@pytest.mark.integration
def test_the_stock_forward_on_a_moslim_checkpoint_refuses_instead_of_returning_a_constant(reward_group):
    import ray
    import torch

    group, _ = reward_group
    sequences = torch.ones(1, 5, dtype=torch.long)
    refs = group.async_run_method_batch(method_name="forward", sequences=[sequences], attention_mask=[sequences])
    with pytest.raises(ray.exceptions.RayTaskError, match="make_experience. patch is not active"):
        ray.get(refs)


@pytest.mark.integration
def test_a_sample_without_a_moslim_label_stops_the_run_with_the_reason(reward_group):
    import ray
    from transformers import AutoTokenizer

    group, strategy = reward_group
    tokenizer = AutoTokenizer.from_pretrained(strategy.args.actor.model_name_or_path)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    s = experience_of(tokenizer, prompt, "", "Hello!")  # a prompt dataset that was never conditioned: empty label
    refs = group.async_run_method_batch(
        method_name="forward",
        sequences=[s.sequences], attention_mask=[s.attention_mask], action_mask=[s.action_mask],
        prompts=[s.prompts], labels=[s.labels],
    )  # fmt: skip
    with pytest.raises(
        ray.exceptions.RayTaskError, match="MOSLIM reward failed for 1 of 1 samples: sample 0: .*label"
    ):
        ray.get(refs)


# Stops OpenRLHF's train() at its first step after ray.init (get_strategy; GPU work starts after it) and reports what
# train() received. Replacing that OpenRLHF function is the only stand-in: nothing of ours is replaced.
DRIVER = """
import json, os, sys
import openrlhf.utils

def stop_before_gpu_work(args):
    import ray
    report = {
        "moslim": vars(args.moslim),
        "ray_initialized": ray.is_initialized(),
        "runtime_env": dict(ray.get_runtime_context().runtime_env),
        "estimator": args.algo.advantage.estimator,
        "clip_range": list(args.reward.clip_range),
        "critic": args.critic.model_name_or_path,
        "label_key": args.data.label_key,
        "openrlhf": openrlhf.utils.__file__,
        # The reward actor class train_ppo_ray (running as __main__) imported by name, and what is patched here.
        "reward_actor": sys.modules["__main__"].RewardModelActor.__ray_actor_class__.__qualname__,
        "applied": __import__("moslim_plugin.integration.patches").integration.patches.applied(),
        # What a worker of this job (e.g. a vLLM engine actor loading the reward function) finds in its environment.
        "worker_reward_config": ray.get(ray.remote(num_cpus=0.1)(
            lambda: os.environ.get("MOSLIM_REWARD_CONFIG")).remote()),
    }
    with open(os.environ["MOSLIM_TEST_REPORT"], "w") as f:
        json.dump(report, f, default=str)
    raise SystemExit(0)

openrlhf.utils.get_strategy = stop_before_gpu_work
from moslim_plugin.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run_driver(tmp_path, cluster, argv, extra_env=(), refused=None) -> dict:
    """`moslim-openrlhf train_ppo_ray argv` in a subprocess up to OpenRLHF's train(); what train() received (or,
    with `refused`, that it stopped before with that message)."""
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    report = tmp_path / "report.json"
    # As the job supervisor of `ray job submit --runtime-env-json '{"env_vars": {"NCCL_DEBUG": "INFO"}}'` passes it
    # on: the launcher must not declare NCCL_DEBUG again (Ray refuses to merge two runtime envs sharing a key).
    job = {"runtime_env": {"env_vars": {"NCCL_DEBUG": "INFO"}}, "metadata": {}}
    env = dict(
        os.environ,
        MOSLIM_TEST_REPORT=str(report),
        RAY_JOB_CONFIG_JSON_ENV_VAR=json.dumps(job),
        NCCL_DEBUG="INFO",
        RAY_ADDRESS=cluster,  # the module's cluster: starting another one costs ~30 s here
        **dict(extra_env),
    )
    proc = subprocess.run(
        [sys.executable, str(driver), *argv], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    if refused:
        assert proc.returncode != 0 and refused in proc.stderr, proc.stderr[-4000:]
        return {}
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(report.read_text())


def openrlhf_argv(tmp_path, actor):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"input": "How do I bake bread?"}) + "\n")
    return [
        "train_ppo_ray",
        "--ref.num_nodes", "1", "--ref.num_gpus_per_node", "1",
        "--reward.num_nodes", "1", "--reward.num_gpus_per_node", "1",
        "--critic.num_nodes", "1", "--critic.num_gpus_per_node", "1",
        "--actor.num_nodes", "1", "--actor.num_gpus_per_node", "1",
        "--vllm.num_engines", "1", "--vllm.tensor_parallel_size", "1", "--train.colocate_all",
        "--actor.model_name_or_path", str(actor),
        "--ckpt.path", str(tmp_path / "ckpt"), "--ckpt.save_steps", "-1",
        "--train.micro_batch_size", "2", "--train.batch_size", "8",
        "--rollout.micro_batch_size", "4", "--rollout.batch_size", "8", "--rollout.n_samples_per_prompt", "4",
        "--train.max_epochs", "1", "--data.max_len", "1024", "--rollout.max_new_tokens", "256",
        "--ds.zero_stage", "2", "--ds.param_dtype", "bf16", "--ds.attn_implementation", "sdpa",
        "--actor.adam.lr", "5e-7", "--algo.kl.init_coef", "0.01", "--algo.kl.estimator", "k3", "--algo.kl.use_loss",
        "--algo.advantage.estimator", "group_norm", "--reward.clip_range", "-5", "5",
        "--data.prompt_dataset", str(prompts), "--data.input_key", "input", "--data.label_key", "label",
        "--data.apply_chat_template", "--actor.gradient_checkpointing_enable",
    ]  # fmt: skip


@pytest.mark.integration
def test_a_full_command_line_reaches_openrlhfs_train_with_args_moslim_under_a_job_runtime_env(
    ray_cluster, moslim_rm, minilm_dir, tmp_path
):
    argv = openrlhf_argv(tmp_path, minilm_dir) + [
        "--reward.model_name_or_path", str(moslim_rm),
        "--moslim.spec", "hh", "--moslim.sampling", "subset", "--moslim.seed", "7",
        "--moslim.mapping", "moslim", "--moslim.mapping_kwargs", "{}", "--moslim.placement", "user_prefix",
    ]  # fmt: skip
    got = run_driver(tmp_path, ray_cluster, argv)
    assert got["ray_initialized"]
    moslim = got["moslim"]
    assert moslim["sampling"] == "subset" and moslim["seed"] == 7 and moslim["placement"] == "user_prefix"
    assert moslim["in_process"] is True  # the reward model is a MOSLIM checkpoint
    # OpenRLHF's own parsing and validation ran (its values; no critic for group_norm).
    assert got["estimator"] == "group_norm" and got["clip_range"] == [-5.0, 5.0] and got["critic"] is None
    assert got["label_key"] == "label"
    assert got["reward_actor"] == "MoslimRewardModelActor"
    assert {"reward_actor", "hierarchize"} <= set(got["applied"])
    runtime_env = got["runtime_env"]
    hook = runtime_env.get("worker_process_setup_hook") or runtime_env["env_vars"].get(launcher.RAY_SETUP_HOOK_ENV_VAR)
    assert hook == activate.WORKER_SETUP_HOOK
    assert runtime_env["env_vars"]["NCCL_DEBUG"] == "INFO"
    assert got["worker_reward_config"] is None  # in-process: the config travels in args.moslim, not the env


@pytest.mark.integration
def test_a_full_command_line_with_a_rules_only_reward_loads_no_model_and_a_broken_rule_stops_it_in_one_line(
    ray_cluster, minilm_dir, tmp_path
):
    """The spec file is the whole reward (in-process: OpenRLHF's reward group gets its path); a custom rule that
    fails on a plain response stops the launch before Ray, with one line naming the objective."""
    spec_file = write_rules_spec(tmp_path / "rules.yaml")
    flags = ["--moslim.spec", str(spec_file), "--moslim.sampling", "uniform"]
    argv = openrlhf_argv(tmp_path, minilm_dir) + ["--reward.model_name_or_path", str(spec_file), *flags]
    got = run_driver(tmp_path, ray_cluster, argv)
    assert got["moslim"]["in_process"] is True and str(spec_file) in got["moslim"]["reward"]
    assert got["reward_actor"] == "MoslimRewardModelActor"
    # The driver runs from tmp_path, so `my_rules` is importable there as a user's own module would be.
    (tmp_path / "my_rules.py").write_text("def counts_characters(question, response):\n    return len(response)\n")
    broken = json.loads(json.dumps(RULES_SPEC.to_dict()))
    broken["objectives"][1]["rule"] = {"name": "my_rules:counts_characters"}
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    argv = openrlhf_argv(tmp_path, minilm_dir) + ["--reward.model_name_or_path", str(tmp_path / "broken.json")]
    refused = "error: rule objective 'format' ({'name': 'my_rules:counts_characters'}) fails on the plain response"
    run_driver(tmp_path, ray_cluster, argv, refused=refused)


@pytest.mark.integration
@pytest.mark.slow
def test_the_reward_function_path_gets_the_command_lines_configuration_in_every_worker(
    ray_cluster, moslim_rm, minilm_dir, tmp_path
):
    from moslim_plugin.integration.remote import REWARD_FUNC_FILE
    from moslim_plugin.integration.reward_config import RewardConfig

    argv = openrlhf_argv(tmp_path, minilm_dir) + [
        "--reward.remote_url", str(REWARD_FUNC_FILE), "--reward.model_name_or_path", str(moslim_rm),
        "--moslim.spec", "hh", "--moslim.mapping", "expected_level", "--moslim.strict", "--moslim.max_length", "256",
    ]  # fmt: skip
    got = run_driver(tmp_path, ray_cluster, argv)
    assert got["moslim"]["in_process"] is False
    config = RewardConfig.from_dict(json.loads(got["worker_reward_config"]))
    assert (config.mapping, config.strict, config.max_length, config.rm_path) == (
        "expected_level",
        True,
        256,
        str(moslim_rm),
    )


@pytest.mark.integration
@pytest.mark.slow
def test_with_the_upstream_diff_the_plugins_parser_hook_gives_train_the_args_moslim_of_the_runtime_patch(
    ray_cluster, moslim_rm, minilm_dir, tmp_path
):
    """OpenRLHF with the diff, runtime patching off: --moslim.* reach train_ppo_ray's own parser through the plugin's
    `openrlhf.train_ppo_ray.arguments` entry point (as pyproject.toml declares it; the plugin's metadata written here
    shadows the installed one, which `make setup` writes the same), and args.moslim arrives checked as with the
    runtime `hierarchize` patch."""
    import tomllib

    upstream_openrlhf(tmp_path / "upstream")
    project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]
    group = "openrlhf.train_ppo_ray.arguments"
    meta = tmp_path / "upstream" / f"moslim_plugin-{project['version']}.dist-info"
    meta.mkdir()
    (meta / "METADATA").write_text(f"Metadata-Version: 2.1\nName: moslim_plugin\nVersion: {project['version']}\n")
    entry_points = "".join(f"{name} = {target}\n" for name, target in project["entry-points"][group].items())
    (meta / "entry_points.txt").write_text(f"[{group}]\n{entry_points}")
    off = {
        "PYTHONPATH": os.pathsep.join([str(tmp_path / "upstream"), os.environ["PYTHONPATH"]]),
        patches.RUNTIME_ENV: "0",
    }
    argv = openrlhf_argv(tmp_path, minilm_dir) + [
        "--reward.model_name_or_path", str(moslim_rm),
        "--moslim.spec", "hh", "--moslim.sampling", "subset", "--moslim.seed", "7",
        "--moslim.mapping", "moslim", "--moslim.mapping_kwargs", "{}", "--moslim.placement", "user_prefix",
    ]  # fmt: skip
    runtime = run_driver(tmp_path, ray_cluster, argv)
    upstream = run_driver(tmp_path, ray_cluster, argv, extra_env=off)
    assert upstream["openrlhf"].startswith(str(tmp_path / "upstream")) and upstream["applied"] == []
    assert "hierarchize" in runtime["applied"]
    assert upstream["moslim"]["in_process"] is True and upstream["moslim"] == runtime["moslim"]
    assert upstream["ray_initialized"] and upstream["runtime_env"] == runtime["runtime_env"] | {
        "env_vars": runtime["runtime_env"]["env_vars"] | {patches.RUNTIME_ENV: "0"}
    }
    bad = ["{bad" if arg == "{}" else arg for arg in argv]
    refused = "argument --moslim.mapping_kwargs: expected a JSON object, got '{bad'"
    run_driver(tmp_path, ray_cluster, bad, extra_env=off, refused=refused)
