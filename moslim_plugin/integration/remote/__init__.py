"""`moslim-openrlhf reward-func-path`: print the path of the MOSLIM reward function file beside this module.

Pass that file (`moslim_reward_func.py`) as `--reward.remote_url`; it builds its `RewardEngine` from the
configuration the launcher put into the Ray job's runtime env.
"""

import argparse
from pathlib import Path

REWARD_FUNC_FILE = Path(__file__).parent / "moslim_reward_func.py"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="moslim-openrlhf reward-func-path",
        description="Print the path of the MOSLIM reward function file to pass as --reward.remote_url, together with "
        "--reward.model_name_or_path <MOSLIM RM> and the --moslim.* reward flags: `moslim-openrlhf train_ppo_ray` "
        "validates them and hands them to the file through the Ray job's runtime env.",
    )
    parser.parse_args(argv)
    if not REWARD_FUNC_FILE.is_file():
        raise FileNotFoundError(f"{REWARD_FUNC_FILE} is missing from the installed package: reinstall moslim-plugin")
    print(REWARD_FUNC_FILE)
    return 0
