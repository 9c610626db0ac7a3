"""MOSLIM reward for OpenRLHF: pass this file as `--reward.remote_url` (`moslim-openrlhf reward-func-path` prints it).

OpenRLHF's `SingleTurnAgentExecutor` imports it once per vLLM engine actor and calls `reward_func` through
`asyncio.to_thread`, one sample per call, many calls at once. The engine below batches those threads into one
forward pass of the MOSLIM reward model. Its configuration is the one `moslim-openrlhf train_ppo_ray` built and
validated from its command line (--reward.model_name_or_path, --moslim.*) and put into the job's runtime env.

The model is loaded at import, so a missing configuration or a wrong path stops the engine actor at start-up with
the reason instead of producing a run without rewards. When too many samples fail, `reward_func` raises
`RewardFailure`, which OpenRLHF does not swallow: the run stops with the reasons.
"""

from moslim_plugin.integration import reward_config
from moslim_plugin.integration.reward_engine import DeadlineExceeded, QueueFull, RewardFailure, build_engine

ENGINE = build_engine(reward_config.from_env())


def reward_func(queries, prompts, labels):
    try:
        reply = ENGINE(queries, prompts, labels)
    except (QueueFull, DeadlineExceeded) as e:  # an Exception would be swallowed by OpenRLHF: stop with the reason
        raise RewardFailure(f"MOSLIM reward engine overloaded: {e}") from e
    if len(queries) != 1:
        return reply
    # OpenRLHF wraps each value as torch.tensor([value]): plain floats give the (1,) tensors it expects.
    return {
        "rewards": reply["rewards"][0],
        "scores": reply["scores"][0],
        "extra_logs": {key: values[0] for key, values in reply["extra_logs"].items()},
        "reasons": reply["reasons"],
    }
