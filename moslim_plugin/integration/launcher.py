"""`moslim-openrlhf train_ppo_ray <OpenRLHF flags> --moslim.* ...`: OpenRLHF's own train_ppo_ray, plus MOSLIM.

The --moslim.* flags are taken out of the command line here; everything else goes to `openrlhf.cli.train_ppo_ray`,
run as `__main__` (runpy), so its parser and all its validation run unchanged. The MOSLIM flags reach OpenRLHF as
`args.moslim` through a wrapper of `openrlhf.utils.config.hierarchize` (called right after parse_args), and from
there travel in `args`/`strategy.args` to every Ray actor. That wrapper is also where the MOSLIM flags are checked
against OpenRLHF's (label key, chat template, reward model) and where Ray is started with the plugin's worker setup
hook, before `train()` (which only calls ray.init if Ray is not initialised). With MOSLIM_RUNTIME_PATCHES=0
(OpenRLHF carries patches/openrlhf-0.11.2-moslim.diff) nothing is stripped or wrapped: the diff's parser takes the
flags through `add_arguments`, an entry point, and runs the same checks (`finish_args`) after hierarchize.

Under `ray job submit`, Ray merges the job's runtime env with the driver's key by key and fails on any shared key,
so the driver declares only what the job does not: the setup hook (refused if the job declares a different one)
and OpenRLHF's own env vars.
"""

import argparse
import dataclasses
import functools
import json
import os
import re
import runpy
import sys
from pathlib import Path
from types import SimpleNamespace

from moslim_plugin import UserError
from moslim_plugin.data.datasets import TargetSampler, add_sampling_flags, parse_assignments, parse_fixed
from moslim_plugin.integration import activate, patches, reward_config

# Ray's own names (ray._private.runtime_env.constants / ray._private.ray_constants), kept here so that building the
# runtime env does not import Ray.
RAY_JOB_CONFIG_JSON_ENV_VAR = "RAY_JOB_CONFIG_JSON_ENV_VAR"
RAY_SETUP_HOOK_ENV_VAR = "__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR"
# The env vars (and defaults) OpenRLHF's train() passes to ray.init, honouring the caller's environment like it does.
OPENRLHF_RAY_ENV = {"TOKENIZERS_PARALLELISM": "true", "NCCL_DEBUG": "WARN", "RAY_ENABLE_ZERO_COPY_TORCH_TENSORS": "1"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="moslim-openrlhf train_ppo_ray",
        add_help=False,
        allow_abbrev=False,
        description="OpenRLHF's train_ppo_ray with a MOSLIM multi-head reward model. Every flag not listed here "
        "goes to OpenRLHF (see its help below).",
    )
    add_moslim_flags(p)
    return p


def add_moslim_flags(p) -> None:
    g = p.add_argument_group("MOSLIM prompts")
    g.add_argument("--moslim.spec", default=None, help="objective spec (YAML/JSON) the prompts are conditioned on")
    add_sampling_flags(g, sampling_default=None)  # None: the prompts already carry MOSLIM labels
    reward_config.add_flags(p.add_argument_group("MOSLIM reward (in-process, the reward-func .py or serve-reward)"))


def add_arguments(parser):
    """The plugin's entry point in the diff's `openrlhf.train_ppo_ray.arguments` group (OpenRLHF carries
    patches/openrlhf-0.11.2-moslim.diff, runtime patching off): --moslim.* join train_ppo_ray's own parser, and the
    returned function checks them on the hierarchized args before train(), as the runtime `hierarchize` patch does.
    With runtime patching on, that patch does it: nothing is added here."""
    if os.environ.get(patches.RUNTIME_ENV, "1") != "0":
        return None
    add_moslim_flags(parser)
    return finish_diff_args


def finish_diff_args(args):
    """`finish_args` for the diff's entry point, where OpenRLHF's own main, not `moslim-openrlhf`, is running: a
    user error is printed as one line with exit code 2 here, as the console script does."""
    try:
        return finish_args(args, args.moslim)
    except UserError as e:
        print(f"moslim-openrlhf train_ppo_ray: error: {' '.join(str(e).split())}", file=sys.stderr)
        raise SystemExit(2) from None


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        build_parser().print_help()  # then OpenRLHF prints its own help and exits
    # Runtime patching off: OpenRLHF carries the diff, whose parser takes --moslim.* through add_arguments.
    runtime = os.environ.get(patches.RUNTIME_ENV, "1") != "0"
    moslim, rest = split_argv(argv) if runtime else (None, argv)

    activate.activate_all()
    if runtime:
        patches.apply(patches.HIERARCHIZE, make=functools.partial(wrap_hierarchize, moslim=moslim))
    saved_argv = sys.argv
    sys.argv = ["train_ppo_ray", *rest, *diff_extension_flags(rest)]
    try:
        runpy.run_module("openrlhf.cli.train_ppo_ray", run_name="__main__", alter_sys=True)
    finally:
        sys.argv = saved_argv
        patches.revert(patches.HIERARCHIZE.name)
    return 0


def diff_extension_flags(rest, environ=None) -> list[str]:
    """With runtime patching off (OpenRLHF carries patches/openrlhf-0.11.2-moslim.diff), the diff's flags that plug
    in what the runtime patches would: the reward-model actor class and the row-preprocessing hook."""
    environ = os.environ if environ is None else environ
    if environ.get(patches.RUNTIME_ENV, "1") != "0":
        return []
    flags = {
        "--reward.actor_class": "moslim_plugin.integration.ray_reward:MoslimRewardModelActor",
        "--data.preprocess_fn": "moslim_plugin.integration.dataset_hook:preprocess_row",
    }
    return [item for flag, value in flags.items() if flag not in rest for item in (flag, value)]


def split_argv(argv) -> tuple[SimpleNamespace, list[str]]:
    """(the --moslim.* flags as a namespace without the prefix, every other argument in its original order)."""
    parser = build_parser()
    ours, rest = parser.parse_known_args(argv)
    stray = [a for a in rest if a.startswith("--moslim")]
    if stray:
        known = ", ".join(a.option_strings[0] for a in parser._actions)
        parser.error(f"unknown MOSLIM flag(s) {stray}; expected one of: {known}")
    return SimpleNamespace(**{key.split(".", 1)[1]: value for key, value in vars(ours).items()}), rest


def wrap_hierarchize(original, moslim):
    @functools.wraps(original)
    def hierarchize(flat_args):
        return finish_args(original(flat_args), moslim)

    return hierarchize


def finish_args(args, moslim):
    """OpenRLHF's hierarchized args with args.moslim checked and built from the --moslim.* flags `moslim`, then Ray
    started with the plugin's worker setup hook (train() only calls ray.init if Ray is not initialised)."""
    args.moslim = check_moslim_args(moslim, args)
    from moslim_plugin.integration import compat

    compat.check_args(args)
    init_ray(args.moslim.reward if args.moslim.reward is not None and not args.moslim.in_process else None)
    return args


def fail(message: str):
    # A UserError: `moslim-openrlhf` (or `finish_diff_args`) prints it as one line and exits with code 2.
    raise UserError(message)


def check_moslim_args(moslim, args) -> SimpleNamespace:
    """Validate the --moslim.* flags against OpenRLHF's and build what the workers need (parsed, self-contained):
    the sampling settings and `reward`, the one RewardConfig of every reward path (None: the reward is not MOSLIM)."""
    from moslim_plugin.core.spec import load_spec

    spec = load_spec(moslim.spec) if moslim.spec else None
    m = check_sampling(moslim, args, spec)
    m.reward, m.in_process = reward_of(moslim, args, spec)
    if m.reward is None and m.sampling:
        fail(
            f"--moslim.sampling conditions prompts on directives, but nothing would score them: "
            f"--reward.model_name_or_path {args.reward.model_name_or_path!r} is not a MOSLIM checkpoint and no "
            f"MOSLIM --reward.remote_url is given"
        )
    given = given_flags(moslim)
    if m.reward is None and given:
        fail(f"{given} would do nothing: {why_not_moslim(args)}; remove them")
    fields = dataclasses.fields(reward_config.RewardConfig)
    remote_only = [
        flag for flag in given if flag in {f"--moslim.{f.name}" for f in fields if f.metadata.get("remote_only")}
    ]
    if m.in_process and remote_only:
        fail(
            f"{remote_only} would do nothing with the reward model in-process (--reward.model_name_or_path "
            f"{args.reward.model_name_or_path}): there, a sample that cannot be scored always stops the run"
        )
    if m.reward is not None and not args.data.label_key:
        fail("the MOSLIM reward reads each prompt's targets from its label: pass --data.label_key (e.g. label)")
    if m.in_process and args.algo.advantage.estimator == "gae" and not args.critic.model_name_or_path:
        fail(
            "PPO (gae) without --critic.model_name_or_path: OpenRLHF would initialise the critic from the reward "
            "model, but a MOSLIM reward model is a multi-head classifier with its own tokenizer; pass the policy "
            "(--critic.model_name_or_path <actor path>)"
        )
    generated = getattr(getattr(args, "rollout", None), "max_new_tokens", None) or getattr(args.data, "max_len", None)
    if m.reward is not None and generated and generated > m.reward.max_length:
        print(
            f"moslim-openrlhf train_ppo_ray: note: the policy may generate {generated} tokens, more than "
            f"--moslim.max_length {m.reward.max_length}: longer samples are scored truncated (question first, then "
            "the end of the response) and counted in moslim/truncated",
            file=sys.stderr,
        )
    return m


def check_sampling(moslim, args, spec) -> SimpleNamespace:
    """The sampling flags, parsed and checked (the dataset hook draws targets with them in the trainer actor)."""
    m = SimpleNamespace(sampling=moslim.sampling, seed=moslim.seed, placement=moslim.placement, spec=moslim.spec,
                        style=moslim.style)  # fmt: skip
    m.spec_dict = spec.to_dict() if spec else None  # workers get the spec itself, not a path they might not see
    m.fixed = parse_fixed(moslim.fixed) if moslim.fixed else None
    m.columns = parse_assignments(moslim.columns, "--moslim.columns") if moslim.columns else None
    if not m.sampling:
        if m.fixed or m.columns:
            fail("--moslim.fixed / --moslim.columns only apply with --moslim.sampling fixed / column")
        return m
    if not spec:
        fail(f"--moslim.sampling {m.sampling} needs --moslim.spec (the objectives to draw targets for)")
    if not args.data.apply_chat_template:
        fail("--moslim.sampling turns prompts into chat messages: pass --data.apply_chat_template")
    if not args.data.label_key:
        fail("--moslim.sampling writes each prompt's targets into its label: pass --data.label_key (e.g. label)")
    TargetSampler(spec, m.sampling, m.seed, fixed=m.fixed, columns=m.columns)
    if m.style == "natural" and not spec.has_instructions:
        fail(f"--moslim.style natural needs per-level 'instructions' in every objective of {m.spec}; add them "
             "or pass --moslim.style tagged")  # fmt: skip
    return m


def reward_of(moslim, args, spec) -> tuple:
    """(the validated RewardConfig, in_process) of the reward path OpenRLHF's flags select; (None, False) when that
    path is not a MOSLIM one (a stock reward model, another reward function or server, an agent function)."""
    from moslim_plugin.core.rm import is_moslim_checkpoint
    from moslim_plugin.integration.remote import REWARD_FUNC_FILE

    path, remote = args.reward.model_name_or_path, args.reward.remote_url
    if args.train.agent_func_path:
        return None, False
    if not remote:
        if not path or not any(is_moslim_checkpoint(p) for p in path.split(",")):
            return None, False
        if "," in path:
            fail(f"--reward.model_name_or_path {path!r}: a MOSLIM reward model cannot be combined with others")
        return reward_config.RewardConfig.from_flags(moslim, path).validate(spec), True
    urls = remote.split(",")
    if urls[0].endswith(".py"):  # OpenRLHF loads reward_func from the first URL when it is a file
        if Path(urls[0]).name != REWARD_FUNC_FILE.name:
            return None, False
        if not path:
            fail(
                f"--reward.remote_url {urls[0]} (the MOSLIM reward function) loads the reward model named by "
                "--reward.model_name_or_path: pass it"
            )
        return reward_config.RewardConfig.from_flags(moslim, path).validate(spec), False
    if path:
        fail(
            f"--reward.model_name_or_path {path!r} would do nothing with the reward server(s) {redact(remote)}: a "
            "server loads its own reward model; remove it"
        )
    config = reward_config.RewardConfig.from_flags(moslim, None)
    config = dataclasses.replace(config, spec_fingerprint=spec.fingerprint if spec else None)
    healths = [server_health(url) for url in urls]
    if not any(isinstance(h, dict) and "reward_config" in h for h in healths):
        return None, False
    for url, health in zip(urls, healths):
        config.check_server(redact(url), health)
    return config, False


def server_health(url: str) -> dict:
    """GET /health next to a reward server's /get_reward URL, with the same query (an `api_key`)."""
    import urllib.error
    import urllib.parse
    import urllib.request

    parts = urllib.parse.urlsplit(url)
    health_url = urllib.parse.urlunsplit(parts._replace(path=parts.path.rsplit("/", 1)[0] + "/health"))
    try:
        with urllib.request.urlopen(health_url, timeout=10) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as e:
        if isinstance(e, urllib.error.HTTPError) and e.code == 404:
            return {}  # a server without /health (e.g. OpenRLHF's serve_rm): not a MOSLIM one
        hint = "; the server wants its API key: add ?api_key=<key> to the URL" if getattr(e, "code", 0) == 401 else ""
        fail(
            f"--reward.remote_url {redact(url)}: cannot read {redact(health_url)} to check its configuration ({e})"
            + (hint or "; start it first")
        )


def redact(url: str) -> str:
    """The URL as messages show it: an API key in its query stays out of logs."""
    return re.sub(r"(api_key=)[^&#]*", r"\1<key>", url)


def given_flags(moslim) -> list[str]:
    defaults = {action.dest: action.default for action in build_parser()._actions}
    return [f"--moslim.{name}" for name, value in vars(moslim).items() if value != defaults[f"moslim.{name}"]]


def why_not_moslim(args) -> str:
    if args.train.agent_func_path:
        agent = args.train.agent_func_path
        return f"--train.agent_func_path {agent} computes its own rewards (OpenRLHF bypasses the reward model)"
    if args.reward.remote_url:
        return f"--reward.remote_url {redact(args.reward.remote_url)} is not a MOSLIM reward function or server"
    return f"--reward.model_name_or_path {args.reward.model_name_or_path!r} is not a MOSLIM reward model"


def driver_runtime_env(environ=None, reward=None) -> dict:
    """The runtime env for the driver's ray.init: the plugin's worker setup hook, OpenRLHF's env vars and, for the
    reward-func `.py` path, the reward configuration (`reward`), minus every key the job's runtime env
    (`ray job submit --runtime-env-json`) already sets."""
    environ = os.environ if environ is None else environ
    job = json.loads(environ.get(RAY_JOB_CONFIG_JSON_ENV_VAR, "{}")).get("runtime_env") or {}
    job_env = job.get("env_vars") or {}
    if reward_config.ENV_VAR in job_env:
        fail(
            f"the job's runtime env sets {[reward_config.ENV_VAR]}: the reward configuration comes only from this "
            "command line (--reward.model_name_or_path, --moslim.*), and the launcher passes it on itself; remove it"
        )
    runtime_env = {}
    job_hook = job.get("worker_process_setup_hook") or job_env.get(RAY_SETUP_HOOK_ENV_VAR)
    if job_hook is None:
        runtime_env["worker_process_setup_hook"] = activate.WORKER_SETUP_HOOK
    elif job_hook != activate.WORKER_SETUP_HOOK:
        fail(
            f"the job's runtime env sets worker_process_setup_hook={job_hook!r} and Ray allows only one; MOSLIM "
            f"needs {activate.WORKER_SETUP_HOOK} to run in every worker: call it from your hook (def my_hook(): "
            f"{activate.WORKER_SETUP_HOOK}(); ...) or declare {activate.WORKER_SETUP_HOOK!r} as the job's hook"
        )
    env_vars = {key: environ.get(key, default) for key, default in OPENRLHF_RAY_ENV.items()}
    if reward is not None:
        env_vars.update(reward.env_vars())
    for key in (patches.ALLOW_ENV, patches.RUNTIME_ENV):  # workers on other nodes do not inherit the driver's env
        if key in environ:
            env_vars[key] = environ[key]
    env_vars = {key: value for key, value in env_vars.items() if key not in job_env}
    if env_vars:
        runtime_env["env_vars"] = env_vars
    return runtime_env


def init_ray(reward=None) -> None:
    import ray

    if ray.is_initialized():
        fail(
            "Ray is already initialised in this process, so the MOSLIM worker setup hook cannot be declared; start "
            "the launcher in a fresh process"
        )
    ray.init(runtime_env=driver_runtime_env(reward=reward))
