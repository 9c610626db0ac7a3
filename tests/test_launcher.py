"""`moslim-openrlhf train_ppo_ray`: flag handling, checks against OpenRLHF's flags, Ray runtime env, a real launch."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace as NS

import pytest

from moslim_plugin import activate, launcher

VLLM_STUB = Path(__file__).parent / "vllm_stub"
HOOK_ENV = launcher.RAY_SETUP_HOOK_ENV_VAR


def openrlhf_args(label_key="label", chat=True, rm=None, remote="http://127.0.0.1:5000/get_reward"):
    """The parts of OpenRLHF's hierarchized args that the MOSLIM checks read."""
    return NS(
        data=NS(apply_chat_template=chat, label_key=label_key),
        reward=NS(model_name_or_path=rm, remote_url=remote),
        train=NS(agent_func_path=None),
    )


def moslim_flags(*argv):
    ours, rest = launcher.build_parser().parse_known_args(list(argv))
    assert rest == []
    return NS(**{k.split(".", 1)[1]: v for k, v in vars(ours).items()})


@pytest.mark.unit
def test_a_misspelt_moslim_flag_is_refused_with_the_list_of_moslim_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        launcher.main(["--actor.model_name_or_path", "x", "--moslim.sampel", "uniform"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--moslim.sampel" in err and "--moslim.sampling" in err and "--moslim.mapping_kwargs" in err


@pytest.mark.unit
def test_moslim_flags_are_parsed_into_what_every_worker_needs():
    m = launcher.check_moslim_args(
        moslim_flags(
            "--moslim.spec", "hh", "--moslim.targets", "fixed", "--moslim.fixed", "helpful=1,harmless=0",
            "--moslim.mapping_kwargs", '{"norm": "sample"}', "--moslim.seed", "7",
        ),
        openrlhf_args(),
    )  # fmt: skip
    assert m.sampling == "fixed" and m.fixed == {"helpful": 1, "harmless": 0} and m.seed == 7
    assert m.mapping_kwargs == {"norm": "sample"}
    assert m.spec_dict["objectives"][0]["name"] == "helpful"  # the spec itself travels, not a path
    assert m.in_process is False  # remote reward


@pytest.mark.unit
@pytest.mark.parametrize(
    "flags, args, message",
    [
        (["--moslim.sampling", "uniform"], openrlhf_args(), "needs --moslim.spec"),
        (["--moslim.spec", "hh", "--moslim.sampling", "uniform"], openrlhf_args(label_key=None), "--data.label_key"),
        (["--moslim.spec", "hh", "--moslim.sampling", "subset"], openrlhf_args(chat=False), "apply_chat_template"),
        (["--moslim.spec", "hh", "--moslim.fixed", "helpful=1"], openrlhf_args(), "only apply with"),
        (["--moslim.mapping_kwargs", "{norm: 1}"], openrlhf_args(), "--moslim.mapping_kwargs '{norm: 1}' is not JSON"),
        (["--moslim.mapping_kwargs", "[1]"], openrlhf_args(), "must be a JSON object"),
        (["--moslim.spec", "hh", "--moslim.sampling", "fixed", "--moslim.fixed", "helpful=yes"], openrlhf_args(),
         "levels must be integers"),
        (["--moslim.spec", "hh", "--moslim.sampling", "uniform"], openrlhf_args(rm="/no/such/rm", remote=None),
         "nothing would score them"),
    ],
)  # fmt: skip
def test_moslim_flags_that_contradict_openrlhf_flags_stop_the_launch_by_name(flags, args, message):
    with pytest.raises(SystemExit) as exit_info:
        launcher.check_moslim_args(moslim_flags(*flags), args)
    assert message in str(exit_info.value.code)


@pytest.mark.unit
def test_plain_driver_declares_the_worker_hook_and_openrlhfs_env_vars():
    env = launcher.driver_runtime_env({"NCCL_DEBUG": "INFO"})
    assert env["worker_process_setup_hook"] == activate.WORKER_SETUP_HOOK
    # OpenRLHF's own defaults, honouring the caller's environment as its train() does.
    expected = {"TOKENIZERS_PARALLELISM": "true", "NCCL_DEBUG": "INFO", "RAY_ENABLE_ZERO_COPY_TORCH_TENSORS": "1"}
    assert env["env_vars"] == expected


@pytest.mark.unit
def test_under_ray_job_submit_no_key_of_the_jobs_runtime_env_is_repeated():
    job = {"runtime_env": {"env_vars": {"NCCL_DEBUG": "INFO", HOOK_ENV: activate.WORKER_SETUP_HOOK}}}
    env = launcher.driver_runtime_env({launcher.RAY_JOB_CONFIG_JSON_ENV_VAR: json.dumps(job), "NCCL_DEBUG": "INFO"})
    assert "worker_process_setup_hook" not in env  # the job already declares our hook
    assert set(env["env_vars"]) == {"TOKENIZERS_PARALLELISM", "RAY_ENABLE_ZERO_COPY_TORCH_TENSORS"}


@pytest.mark.unit
def test_a_job_with_another_setup_hook_is_told_how_to_chain_ours():
    job = {"runtime_env": {"worker_process_setup_hook": "mycompany.hooks.setup"}}
    with pytest.raises(SystemExit) as exit_info:
        launcher.driver_runtime_env({launcher.RAY_JOB_CONFIG_JSON_ENV_VAR: json.dumps(job)})
    assert (
        "mycompany.hooks.setup" in exit_info.value.code
        and "moslim_plugin.activate.activate_all()" in exit_info.value.code
    )


# Stops OpenRLHF's train() at its first step after ray.init (get_strategy; the GPU work starts after it) and reports
# what train() received. Replacing that OpenRLHF function is the only stand-in: nothing of ours is replaced.
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
    }
    with open(os.environ["MOSLIM_TEST_REPORT"], "w") as f:
        json.dump(report, f, default=str)
    raise SystemExit(0)

openrlhf.utils.get_strategy = stop_before_gpu_work
from moslim_plugin.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.integration
def test_a_full_command_line_reaches_openrlhfs_train_with_args_moslim_under_a_job_runtime_env(tmp_path, minilm_dir):
    from moslim_plugin.rm import MultiHeadRewardModel
    from moslim_plugin.spec import load_spec

    rm_dir = tmp_path / "rm"
    MultiHeadRewardModel.from_backbone(minilm_dir, load_spec("hh")).save_pretrained(rm_dir)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"input": "How do I bake bread?"}) + "\n")
    argv = [
        "train_ppo_ray",
        "--ref.num_nodes", "1", "--ref.num_gpus_per_node", "1",
        "--reward.num_nodes", "1", "--reward.num_gpus_per_node", "1",
        "--critic.num_nodes", "1", "--critic.num_gpus_per_node", "1",
        "--actor.num_nodes", "1", "--actor.num_gpus_per_node", "1",
        "--vllm.num_engines", "1", "--vllm.tensor_parallel_size", "1", "--train.colocate_all",
        "--actor.model_name_or_path", str(minilm_dir), "--reward.model_name_or_path", str(rm_dir),
        "--ckpt.path", str(tmp_path / "ckpt"), "--ckpt.save_steps", "-1",
        "--train.micro_batch_size", "2", "--train.batch_size", "8",
        "--rollout.micro_batch_size", "4", "--rollout.batch_size", "8", "--rollout.n_samples_per_prompt", "4",
        "--train.max_epochs", "1", "--data.max_len", "1024", "--rollout.max_new_tokens", "256",
        "--ds.zero_stage", "2", "--ds.param_dtype", "bf16", "--ds.attn_implementation", "sdpa",
        "--actor.adam.lr", "5e-7", "--algo.kl.init_coef", "0.01", "--algo.kl.estimator", "k3", "--algo.kl.use_loss",
        "--algo.advantage.estimator", "group_norm", "--reward.clip_range", "-5", "5",
        "--data.prompt_dataset", str(prompts), "--data.input_key", "input", "--data.label_key", "label",
        "--data.apply_chat_template", "--actor.gradient_checkpointing_enable",
        "--moslim.spec", "hh", "--moslim.sampling", "subset", "--moslim.seed", "7",
        "--moslim.mapping", "moslim", "--moslim.mapping_kwargs", "{}", "--moslim.placement", "user_prefix",
    ]  # fmt: skip
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    report = tmp_path / "report.json"
    # A `ray job submit --runtime-env-json '{"env_vars": {"NCCL_DEBUG": "INFO"}}'` as the job supervisor passes it on:
    # the launcher must not declare NCCL_DEBUG again (Ray would refuse to merge the two runtime envs).
    job = {"runtime_env": {"env_vars": {"NCCL_DEBUG": "INFO"}}, "metadata": {}}
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(VLLM_STUB), os.environ.get("PYTHONPATH", "")]),
        MOSLIM_TEST_REPORT=str(report),
        RAY_JOB_CONFIG_JSON_ENV_VAR=json.dumps(job),
        NCCL_DEBUG="INFO",
    )
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, str(driver), *argv], env=env, capture_output=True, text=True, timeout=400, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = json.loads(report.read_text())
    assert got["ray_initialized"]
    moslim = got["moslim"]
    assert moslim["sampling"] == "subset" and moslim["seed"] == 7 and moslim["placement"] == "user_prefix"
    assert moslim["in_process"] is True  # the reward model is a MOSLIM checkpoint
    # OpenRLHF's own parsing and validation ran: its values, and its critic defaulting for gae... not for group_norm.
    assert got["estimator"] == "group_norm" and got["clip_range"] == [-5.0, 5.0] and got["critic"] is None
    assert got["label_key"] == "label"
    runtime_env = got["runtime_env"]
    hook = runtime_env.get("worker_process_setup_hook") or runtime_env["env_vars"].get(HOOK_ENV)
    assert hook == activate.WORKER_SETUP_HOOK
    assert runtime_env["env_vars"]["NCCL_DEBUG"] == "INFO"
