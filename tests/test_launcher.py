"""`moslim-openrlhf train_ppo_ray`: flag handling, checks against OpenRLHF's flags, the Ray runtime env.

The real launch (a full command line through OpenRLHF's own train_ppo_ray up to train()) is in test_ray_integration.py,
which shares its Ray cluster.
"""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace as NS

import pytest
from helpers_reward import MIXED_SPEC, RULES_SPEC, write_config_only_rm, write_rules_spec

from moslim_plugin import UserError
from moslim_plugin.core.spec import load_spec
from moslim_plugin.integration import activate, launcher, patches, reward_config
from moslim_plugin.integration.remote import REWARD_FUNC_FILE

HOOK_ENV = launcher.RAY_SETUP_HOOK_ENV_VAR
ROOT = Path(__file__).parent.parent


@pytest.fixture
def rm(tmp_path):
    """A MOSLIM checkpoint for the hh spec, config.json only: the driver checks it without loading weights."""
    return str(write_config_only_rm(tmp_path / "rm", "hh"))


def openrlhf_args(label_key="label", chat=True, rm=None, remote=None, estimator="rloo", agent=None):
    """The parts of OpenRLHF's hierarchized args that the MOSLIM checks read."""
    return NS(
        data=NS(apply_chat_template=chat, label_key=label_key, max_len=1024),
        reward=NS(model_name_or_path=rm, remote_url=remote),
        train=NS(agent_func_path=agent),
        algo=NS(advantage=NS(estimator=estimator)),
        critic=NS(model_name_or_path=None),
        rollout=NS(max_new_tokens=256),
    )


def moslim_flags(*argv):
    moslim, rest = launcher.split_argv(list(argv))
    assert rest == []
    return moslim


@pytest.mark.unit
def test_a_misspelt_moslim_flag_is_refused_with_the_list_of_moslim_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        launcher.main(["--actor.model_name_or_path", "x", "--moslim.sampel", "uniform"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--moslim.sampel" in err and "--moslim.sampling" in err and "--moslim.mapping_kwargs" in err


@pytest.mark.unit
def test_moslim_flags_are_parsed_into_what_every_worker_needs(rm):
    m = launcher.check_moslim_args(
        moslim_flags(
            "--moslim.spec", "hh", "--moslim.sampling", "fixed", "--moslim.fixed", "helpful=1,harmless=0",
            "--moslim.mapping_kwargs", '{"norm": "sample"}', "--moslim.seed", "7",
        ),
        openrlhf_args(rm=rm),
    )  # fmt: skip
    assert m.sampling == "fixed" and m.fixed == {"helpful": 1, "harmless": 0} and m.seed == 7
    assert m.spec_dict["objectives"][0]["name"] == "helpful"  # the spec itself travels, not a path
    assert m.in_process is True and m.reward.rm_path == rm
    assert m.reward.mapping_kwargs == {"norm": "sample"}  # one reward configuration, validated here
    assert m.reward.spec_fingerprint == load_spec("hh").fingerprint


@pytest.mark.unit
@pytest.mark.parametrize(
    "flags, args, message",
    [
        (["--moslim.sampling", "uniform"], dict(), "needs --moslim.spec"),
        (["--moslim.spec", "hh", "--moslim.sampling", "uniform"], dict(label_key=None), "--data.label_key"),
        (["--moslim.spec", "hh", "--moslim.sampling", "subset"], dict(chat=False), "apply_chat_template"),
        (["--moslim.spec", "hh", "--moslim.fixed", "helpful=1"], dict(), "only apply with"),
        (["--moslim.spec", "hh", "--moslim.sampling", "fixed", "--moslim.fixed", "helpful=yes"], dict(),
         "levels must be integers"),
        (["--moslim.spec", "hh", "--moslim.sampling", "fixed", "--moslim.fixed", "helpful=1,harmless=0,helpful=0"],
         dict(), "--moslim.fixed 'helpful=1,harmless=0,helpful=0': 'helpful' is named twice"),
        (["--moslim.mapping_kwargs", '{"norm": "dataset "}'], dict(), "'norm' must be one of .* got 'dataset '"),
        (["--moslim.mapping_kwargs", '{"eps": -1}'], dict(), "'eps' must be a number in .* got -1"),
        (["--moslim.spec", "helpsteer"], dict(), "objective spec mismatch"),  # the RM was trained for hh
    ],
)  # fmt: skip
def test_moslim_flags_that_contradict_openrlhf_flags_or_the_reward_model_stop_the_launch_by_name(
    rm, flags, args, message
):
    with pytest.raises(UserError) as refused:
        launcher.check_moslim_args(moslim_flags(*flags), openrlhf_args(rm=rm, **args))
    assert re.search(message, str(refused.value)), refused.value


@pytest.mark.unit
@pytest.mark.parametrize(
    "flags, message",
    [
        (["--moslim.mapping_kwargs", "{norm: 1}"], "--moslim.mapping_kwargs: expected a JSON object, got '{norm: 1}'"),
        (["--moslim.mapping_kwargs", "[1]"], r"--moslim.mapping_kwargs: expected a JSON object, got '\[1\]'"),
        (["--moslim.max_length", "0"], "--moslim.max_length: expected an integer >= 8, got 0"),
        (["--moslim.max_error_share", "nan"], r"--moslim.max_error_share: expected a number in \[0, 1\), got nan"),
    ],
)
def test_a_bad_reward_flag_value_is_refused_when_parsed_naming_the_flag_and_what_it_accepts(capsys, flags, message):
    with pytest.raises(SystemExit):
        moslim_flags(*flags)
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.unit
@pytest.mark.parametrize(
    "flags, args, message",
    [
        (["--moslim.spec", "hh", "--moslim.sampling", "uniform"], dict(rm="/no/such/rm"),
         "nothing would score them: --reward.model_name_or_path '/no/such/rm' is not a MOSLIM checkpoint"),
        (["--moslim.mapping", "expected_level"], dict(rm="/no/such/rm"),
         r"\['--moslim.mapping'\] would do nothing: --reward.model_name_or_path '/no/such/rm' is not a MOSLIM"),
        (["--moslim.max_length", "256"], dict(rm="RM", agent="agent.py"),
         "would do nothing: --train.agent_func_path agent.py computes its own rewards"),
        (["--moslim.strict"], dict(remote="/x/my_reward.py"),
         "would do nothing: --reward.remote_url /x/my_reward.py is not a MOSLIM reward function"),
        ([], dict(remote=str(REWARD_FUNC_FILE)), "loads the reward model named by --reward.model_name_or_path"),
    ],
)  # fmt: skip
def test_flags_that_would_do_nothing_are_refused_with_the_reason(flags, args, message):
    with pytest.raises(UserError) as refused:
        launcher.check_moslim_args(moslim_flags(*flags), openrlhf_args(**args))
    assert re.search(message, str(refused.value)), refused.value


@pytest.mark.unit
def test_remote_only_reward_flags_are_refused_in_process_where_they_would_do_nothing(rm):
    flags = moslim_flags("--moslim.fallback_reward", "-1", "--moslim.error_window", "8")
    with pytest.raises(UserError, match=r"\['--moslim.fallback_reward', '--moslim.error_window'\] would do nothing"):
        launcher.check_moslim_args(flags, openrlhf_args(rm=rm))
    remote = launcher.check_moslim_args(flags, openrlhf_args(rm=rm, remote=str(REWARD_FUNC_FILE)))
    assert remote.reward.fallback_reward == -1.0 and remote.reward.error_window == 8


@pytest.mark.unit
def test_the_reward_func_path_gets_the_same_configuration_through_the_runtime_env(rm):
    m = launcher.check_moslim_args(
        moslim_flags("--moslim.mapping", "expected_level", "--moslim.strict"),
        openrlhf_args(rm=rm, remote=str(REWARD_FUNC_FILE)),
    )
    assert m.in_process is False and m.reward.mapping == "expected_level" and m.reward.strict
    env = launcher.driver_runtime_env({}, reward=m.reward)
    assert reward_config.from_env(env["env_vars"]) == m.reward  # what the .py file will read in the workers
    # A job that sets the configuration itself would override this command line's: refused.
    job = {"runtime_env": {"env_vars": {reward_config.ENV_VAR: "{}"}}}
    with pytest.raises(UserError, match=r"sets \['MOSLIM_REWARD_CONFIG'\]: the reward configuration comes only"):
        launcher.driver_runtime_env({launcher.RAY_JOB_CONFIG_JSON_ENV_VAR: json.dumps(job)}, reward=m.reward)


@pytest.mark.unit
def test_a_spec_file_of_rules_only_is_the_whole_reward_on_the_in_process_and_function_paths(tmp_path):
    spec_file = str(write_rules_spec(tmp_path / "rules.yaml"))
    flags = moslim_flags("--moslim.spec", spec_file, "--moslim.sampling", "uniform")
    m = launcher.check_moslim_args(flags, openrlhf_args(rm=spec_file))
    assert m.in_process is True and m.reward.rm_path == spec_file
    assert m.reward.spec_fingerprint == RULES_SPEC.fingerprint
    m = launcher.check_moslim_args(moslim_flags(), openrlhf_args(rm=spec_file, remote=str(REWARD_FUNC_FILE)))
    config = json.loads(m.reward.env_vars()[reward_config.ENV_VAR])
    assert m.in_process is False and config["rm_path"] == spec_file


def rules_file(tmp_path, rule, levels=2):
    path = tmp_path / "rules.yaml"
    path.write_text(json.dumps({"objectives": [{"name": "asks", "levels": levels, "rule": rule}]}))
    return str(path)


@pytest.mark.unit
@pytest.mark.parametrize(
    "rule, message",
    [
        ("bulleted_lists", r"rules.yaml: objectives\[0\] \('asks'\): field 'rule': unknown rule 'bulleted_lists'"),
        ({"name": "regex", "pattern": "[a-"}, r"\('asks'\): field 'rule': rule 'regex': 'pattern': '\[a-' is not"),
        ({"name": "helpers_reward:returns", "value": 2}, r"rule objective 'asks' .* returned 2; expected an intege"),
        ({"name": "helpers_reward:asks_back", "min_questions": "two"}, r"rule objective 'asks' .* TypeError: '>='"),
    ],
)
def test_a_bad_rule_stops_the_launch_before_ray_in_one_line_naming_the_objective(tmp_path, rule, message):
    path = rules_file(tmp_path, rule)
    for remote in (None, str(REWARD_FUNC_FILE)):  # in-process and the .py function: the same check
        with pytest.raises(UserError, match=message) as error:
            launcher.check_moslim_args(moslim_flags(), openrlhf_args(rm=path, remote=remote))
        assert "\n" not in str(error.value)


@pytest.mark.unit
def test_the_mapping_check_scores_rule_objectives_one_hot_and_refuses_a_mapping_blind_to_them(tmp_path):
    path = str(write_rules_spec(tmp_path / "rules.yaml"))
    for mapping in ("moslim", "expected_level", "target_logprob"):  # every built-in tells a rule's hit from its miss
        assert reward_config.RewardConfig(rm_path=path, mapping=mapping).validate().rm_path == path
    with pytest.raises(UserError, match=r"gets length \+0, format \+0 reward over one that misses it"):
        reward_config.RewardConfig(rm_path=path, mapping="helpers_reward:constant_mapping").validate()


@pytest.mark.unit
def test_a_spec_file_with_learned_objectives_is_not_a_reward_and_says_what_to_pass(tmp_path):
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps(MIXED_SPEC.to_dict()))
    with pytest.raises(UserError, match=r"\['helpfulness'\] are learned: pass the reward-model checkpoint"):
        launcher.check_moslim_args(moslim_flags(), openrlhf_args(rm=str(path)))


@pytest.mark.unit
def test_ppo_with_an_in_process_moslim_reward_model_needs_an_explicit_critic(rm):
    args = openrlhf_args(rm=rm, estimator="gae")
    with pytest.raises(UserError, match="--critic.model_name_or_path"):
        launcher.check_moslim_args(moslim_flags(), args)
    args.critic.model_name_or_path = "policy"
    assert launcher.check_moslim_args(moslim_flags(), args).in_process is True
    args.data.label_key = None  # the targets travel in the label
    with pytest.raises(UserError, match="--data.label_key"):
        launcher.check_moslim_args(moslim_flags(), args)


@pytest.mark.unit
def test_a_generation_longer_than_the_reward_models_max_length_is_announced(rm, capsys):
    args = openrlhf_args(rm=rm)
    args.rollout.max_new_tokens = 2048
    launcher.check_moslim_args(moslim_flags(), args)
    assert "may generate 2048 tokens, more than --moslim.max_length 512" in capsys.readouterr().err


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
    with pytest.raises(UserError) as refused:
        launcher.driver_runtime_env({launcher.RAY_JOB_CONFIG_JSON_ENV_VAR: json.dumps(job)})
    assert "mycompany.hooks.setup" in str(refused.value)
    assert "moslim_plugin.integration.activate.activate_all()" in str(refused.value)


def openrlhf_flag_names() -> set[str]:
    source = (Path(importlib.util.find_spec("openrlhf").origin).parent / "cli" / "train_ppo_ray.py").read_text()
    names = set(re.findall(r'"(--[a-z_.0-9]+)"', source))
    for prefix in ("actor", "critic"):  # flags that train_ppo_ray adds in a loop over f"--{prefix}..."
        names |= {n.replace("{prefix}", prefix) for n in re.findall(r'f"(--\{prefix\}[a-z_.0-9]*)"', source)}
    return names


@pytest.mark.unit
@pytest.mark.parametrize("script", ["ppo.sh", "reinforce_pp.sh", "rloo.sh", "grpo.sh"])
@pytest.mark.parametrize("variant", ["inprocess", "remote"])
def test_launch_scripts_submit_only_flags_that_openrlhf_and_the_plugin_know(script, variant):
    path = ROOT / "launch" / script
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    env = dict(os.environ, DRY_RUN="1", PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    proc = subprocess.run(["bash", str(path), variant], env=env, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    argv = proc.stdout.decode().split("\0")[:-1]
    assert argv[:3] == ["ray", "job", "submit"]
    runtime_env = json.loads(next(a for a in argv if a.startswith("--runtime-env-json=")).split("=", 1)[1])
    entrypoint = argv[argv.index("--") + 1 :]
    assert entrypoint[:4] == ["python3", "-m", "moslim_plugin", "train_ppo_ray"]
    _, rest = launcher.split_argv(entrypoint[4:])  # invalid choices and unknown --moslim flags exit here
    unknown = {a for a in rest if a.startswith("--")} - openrlhf_flag_names()
    assert not unknown, f"{script} passes flags OpenRLHF does not have: {unknown}"
    estimator = rest[rest.index("--algo.advantage.estimator") + 1]
    expected = {"ppo.sh": "gae", "reinforce_pp.sh": "reinforce_baseline", "rloo.sh": "rloo", "grpo.sh": "group_norm"}
    assert estimator == expected[script]
    if variant == "remote":
        assert Path(rest[rest.index("--reward.remote_url") + 1]).is_file()  # the plugin's reward_func file
        assert "--moslim.strict" in entrypoint and "--reward.model_name_or_path" in rest
        assert not [key for key in runtime_env.get("env_vars", {}) if key.startswith("MOSLIM_")]  # no hand copies
    else:
        assert "--reward.model_name_or_path" in rest and "--reward.remote_url" not in rest
    # Nothing the launcher itself declares at ray.init may be in the job's runtime env twice.
    launcher.driver_runtime_env({launcher.RAY_JOB_CONFIG_JSON_ENV_VAR: json.dumps({"runtime_env": runtime_env})})


@pytest.mark.unit
def test_the_ray_env_var_names_the_launcher_reads_are_rays_own():
    from ray._private.ray_constants import WORKER_PROCESS_SETUP_HOOK_ENV_VAR
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

    assert launcher.RAY_JOB_CONFIG_JSON_ENV_VAR == RAY_JOB_CONFIG_JSON_ENV_VAR
    assert launcher.RAY_SETUP_HOOK_ENV_VAR == WORKER_PROCESS_SETUP_HOOK_ENV_VAR


@pytest.mark.unit
def test_the_diffs_parser_entry_point_adds_the_moslim_flags_only_with_runtime_patching_off(monkeypatch):
    import argparse

    monkeypatch.delenv(patches.RUNTIME_ENV, raising=False)
    parser = argparse.ArgumentParser()
    assert launcher.add_arguments(parser) is None  # runtime patching on: the hierarchize patch takes the flags
    assert not [a for a in parser._actions if a.dest.startswith("moslim.")]
    monkeypatch.setenv(patches.RUNTIME_ENV, "0")
    check = launcher.add_arguments(parser)
    assert callable(check)
    ours = {a.dest: a.default for a in parser._actions if a.dest.startswith("moslim.")}
    assert ours == {a.dest: a.default for a in launcher.build_parser()._actions}
