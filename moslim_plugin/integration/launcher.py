"""`moslim-openrlhf train_ppo_ray <OpenRLHF flags> --moslim.* ...`: OpenRLHF's own train_ppo_ray, plus MOSLIM.

The --moslim.* flags are taken out of the command line here; everything else goes to `openrlhf.cli.train_ppo_ray`,
run as `__main__` (runpy), so its parser and all its validation run unchanged. The MOSLIM flags reach OpenRLHF as
`args.moslim` through a wrapper of `openrlhf.utils.config.hierarchize` (called right after parse_args), and from
there travel in `args`/`strategy.args` to every Ray actor. That wrapper is also where the MOSLIM flags are checked
against OpenRLHF's (label key, chat template, reward model) and where Ray is started with the plugin's worker setup
hook, before `train()` (which only calls ray.init if Ray is not initialised).

Under `ray job submit`, Ray merges the job's runtime env with the driver's key by key and fails on any shared key,
so the driver declares only what the job does not: the setup hook (refused if the job declares a different one)
and OpenRLHF's own env vars.
"""

import argparse
import functools
import json
import os
import runpy
import sys
from types import SimpleNamespace

from moslim_plugin.core.directives import DEFAULT_PLACEMENT, DEFAULT_STYLE, PLACEMENTS, STYLES
from moslim_plugin.data.datasets import SAMPLING_MODES, parse_assignments
from moslim_plugin.integration import activate, patches

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
    g = p.add_argument_group("MOSLIM")
    g.add_argument("--moslim.spec", default=None, help="objective spec (YAML/JSON) the prompts are conditioned on")
    g.add_argument("--moslim.mapping", default="moslim", help="classification -> reward mapping (name or module:fn)")
    g.add_argument("--moslim.mapping_kwargs", default="{}", help="JSON object of keyword arguments for the mapping")
    g.add_argument(
        "--moslim.sampling",
        "--moslim.targets",
        default=None,
        choices=SAMPLING_MODES,
        help="condition every prompt on the fly with targets drawn this way (same as `prepare-prompts`); "
        "default: the prompts already carry MOSLIM labels",
    )
    g.add_argument("--moslim.fixed", default=None, help="targets for --moslim.sampling fixed: helpfulness=3,...")
    g.add_argument(
        "--moslim.columns", "--moslim.target_columns", default=None, help="for column sampling: objective=column,..."
    )
    g.add_argument("--moslim.seed", type=int, default=42, help="target sampling seed (as prepare-prompts)")
    g.add_argument("--moslim.placement", default=DEFAULT_PLACEMENT, choices=PLACEMENTS)
    g.add_argument("--moslim.style", default=DEFAULT_STYLE, choices=STYLES, help="how the directive reads")
    g.add_argument(
        "--moslim.template",
        default="auto",
        help="the policy's chat template, to split prompt and response text: auto, chatml, llama3 or a JSON object",
    )
    g.add_argument("--moslim.max_length", type=int, default=512, help="reward model context (question truncated)")
    g.add_argument("--moslim.batch_size", type=int, default=32, help="reward model forward batch size")
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        build_parser().print_help()  # then OpenRLHF prints its own help and exits
    moslim, rest = split_argv(argv)

    activate.activate_all()
    patches.apply(patches.HIERARCHIZE, make=functools.partial(wrap_hierarchize, moslim=moslim))
    saved_argv = sys.argv
    sys.argv = ["train_ppo_ray", *rest]
    try:
        runpy.run_module("openrlhf.cli.train_ppo_ray", run_name="__main__", alter_sys=True)
    finally:
        sys.argv = saved_argv
        patches.revert(patches.HIERARCHIZE.name)
    return 0


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
        args = original(flat_args)
        args.moslim = check_moslim_args(moslim, args)
        from moslim_plugin.integration import compat

        compat.check_args(args)
        init_ray()
        return args

    return hierarchize


def fail(message: str):
    raise SystemExit(f"moslim-openrlhf train_ppo_ray: error: {message}")


def check_moslim_args(moslim, args) -> SimpleNamespace:
    """Validate the --moslim.* flags against OpenRLHF's and add what the workers need (parsed, self-contained)."""
    from moslim_plugin.core.mappings import resolve_mapping
    from moslim_plugin.core.rm import is_moslim_checkpoint
    from moslim_plugin.core.spec import load_spec
    from moslim_plugin.data.datasets import TargetSampler
    from moslim_plugin.integration.remote_reward import resolve_template

    m = SimpleNamespace(**vars(moslim))
    try:
        m.mapping_kwargs = json.loads(moslim.mapping_kwargs)
    except json.JSONDecodeError as e:
        fail(f"--moslim.mapping_kwargs {moslim.mapping_kwargs!r} is not JSON ({e})")
    if not isinstance(m.mapping_kwargs, dict):
        fail(f"--moslim.mapping_kwargs must be a JSON object, got {moslim.mapping_kwargs!r}")
    resolve_mapping(m.mapping)  # fail in the driver, not in a GPU actor, on a typo
    resolve_template(m.template)
    # Workers get the spec itself, not a path they might not see.
    m.spec_dict = load_spec(m.spec).to_dict() if m.spec else None

    m.fixed = parse_assignments(moslim.fixed, "--moslim.fixed") if moslim.fixed else None
    if m.fixed:
        try:
            m.fixed = {name: int(level) for name, level in m.fixed.items()}
        except ValueError:
            fail(f"--moslim.fixed {moslim.fixed!r}: levels must be integers, e.g. helpfulness=3,verbosity=1")
    m.columns = parse_assignments(moslim.columns, "--moslim.columns") if moslim.columns else None
    if m.sampling:
        if not m.spec:
            fail(f"--moslim.sampling {m.sampling} needs --moslim.spec (the objectives to draw targets for)")
        if not args.data.apply_chat_template:
            fail("--moslim.sampling turns prompts into chat messages: pass --data.apply_chat_template")
        if not args.data.label_key:
            fail("--moslim.sampling writes each prompt's targets into its label: pass --data.label_key (e.g. label)")
        TargetSampler(load_spec(m.spec_dict), m.sampling, m.seed, fixed=m.fixed, columns=m.columns)
        if m.style == "natural" and not load_spec(m.spec_dict).has_instructions:
            fail(f"--moslim.style natural needs per-level 'instructions' in every objective of {m.spec}; add them "
                 "or pass --moslim.style tagged")  # fmt: skip
    elif m.fixed or m.columns:
        fail("--moslim.fixed / --moslim.columns only apply with --moslim.sampling fixed / column")

    path, remote = args.reward.model_name_or_path, args.reward.remote_url or args.train.agent_func_path
    m.in_process = bool(path) and not remote and any(is_moslim_checkpoint(p) for p in path.split(","))
    if m.in_process and "," in path:
        fail(f"--reward.model_name_or_path {path!r}: a MOSLIM reward model cannot be combined with others")
    if m.in_process and not args.data.label_key:
        fail("the MOSLIM reward model reads each prompt's targets from its label: pass --data.label_key (e.g. label)")
    if m.in_process and args.algo.advantage.estimator == "gae" and not args.critic.model_name_or_path:
        fail(
            "PPO (gae) without --critic.model_name_or_path: OpenRLHF would initialise the critic from the reward "
            "model, but a MOSLIM reward model is a multi-head classifier with its own tokenizer; pass the policy "
            "(--critic.model_name_or_path <actor path>)"
        )
    if m.sampling and not (m.in_process or remote):
        fail(
            f"--moslim.sampling conditions prompts on directives, but nothing would score them: "
            f"--reward.model_name_or_path {path!r} is not a MOSLIM checkpoint and no --reward.remote_url is given"
        )
    return m


def driver_runtime_env(environ=os.environ) -> dict:
    """The runtime env for the driver's ray.init: the plugin's worker setup hook and OpenRLHF's env vars, minus
    every key the job's runtime env (`ray job submit --runtime-env-json`) already sets."""
    job = json.loads(environ.get(RAY_JOB_CONFIG_JSON_ENV_VAR, "{}")).get("runtime_env") or {}
    job_env = job.get("env_vars") or {}
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
    if patches.ALLOW_ENV in environ:  # workers on other nodes do not inherit the driver's environment
        env_vars[patches.ALLOW_ENV] = environ[patches.ALLOW_ENV]
    env_vars = {key: value for key, value in env_vars.items() if key not in job_env}
    if env_vars:
        runtime_env["env_vars"] = env_vars
    return runtime_env


def init_ray() -> None:
    import ray

    if ray.is_initialized():
        raise SystemExit(
            "moslim-openrlhf train_ppo_ray: error: Ray is already initialised in this process, so the MOSLIM worker "
            "setup hook cannot be declared; start the launcher in a fresh process"
        )
    ray.init(runtime_env=driver_runtime_env())
