"""`moslim-openrlhf <command> ...`: one console script, one module per command.

Commands are imported lazily so that `--help` and the launcher stay fast and a missing optional dependency only
breaks the command that needs it.
"""

import argparse
import importlib
import sys

from moslim_plugin import UserError

COMMANDS = {
    "train_ppo_ray": ("moslim_plugin.integration.launcher", "run OpenRLHF's train_ppo_ray with the --moslim.* flags"),
    "prepare-prompts": ("moslim_plugin.data.datasets", "condition a prompt dataset on preference directives"),
    "prepare-ratings": ("moslim_plugin.data.ratings", "turn rated responses into per-objective classification rows"),
    "train-rm": ("moslim_plugin.data.train_rm", "train the multi-head classification reward model"),
    "evaluate-rm": (
        "moslim_plugin.data.evaluate_rm",
        "per-head metrics or pairwise accuracy of a reward model on a file",
    ),
    "models": ("moslim_plugin.demo.real_models", "print the local paths of the bundled real models (SmolLM2, MiniLM)"),
    "evaluate": ("moslim_plugin.demo.evaluate", "controllability evaluation of a policy, judged by an oracle"),
    "screen": (
        "moslim_plugin.demo.screen",
        "does the starting policy follow each directive? (before RL: gap, level rates)",
    ),
    "demo": ("moslim_plugin.demo.pipeline", "the whole MOSLIM loop on one CPU machine with real small models"),
    "reward-func-path": (
        "moslim_plugin.integration.remote",
        "print the .py path to pass as --reward.remote_url",
    ),
    "serve-reward": ("moslim_plugin.integration.server", "HTTP reward server speaking OpenRLHF's remote-RM protocol"),
}

SETUP_HINT = "moslim-openrlhf: {missing!r} is not installed here; run `make setup` first (see README.md)"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        width = max(map(len, COMMANDS))
        print("usage: moslim-openrlhf <command> [args...]\n\ncommands:")
        for name, (_, help_text) in COMMANDS.items():
            print(f"  {name:<{width}}  {help_text}")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"moslim-openrlhf: unknown command {command!r}; expected one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    # Argparse errors (usage + message) become a UserError too: every user error is one line, exit code 2.
    original_error = argparse.ArgumentParser.error
    argparse.ArgumentParser.error = _one_line_error
    try:
        return importlib.import_module(COMMANDS[command][0]).main(rest) or 0
    except UserError as e:
        # Input the user can fix: the message says what and where; a traceback would bury it.
        print(f"moslim-openrlhf {command}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        # Commands import heavy packages lazily, so this can come from inside main(). Only a missing third-party
        # package means "not set up"; a missing module of ours is a real bug and keeps its traceback.
        if e.name and not e.name.startswith("moslim_plugin"):
            print(SETUP_HINT.format(missing=e.name), file=sys.stderr)
            return 1
        raise
    finally:
        argparse.ArgumentParser.error = original_error


def _one_line_error(parser, message):
    raise UserError(f"{message} (see {parser.prog} --help)")


if __name__ == "__main__":
    sys.exit(main())
