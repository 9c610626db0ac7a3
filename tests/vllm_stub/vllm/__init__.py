"""Tests-only stand-in for vLLM (CUDA-only, not installable here).

OpenRLHF's `openrlhf.trainer.ray` package and `cli/train_ppo_ray.py` import vLLM at module level, using only these
names at import time: `vllm.SamplingParams`, `vllm.inputs.TokensPrompt`, `vllm.utils.random_uuid`. Tests put this
folder on PYTHONPATH (also for Ray workers); nothing here generates text, and no test of ours creates vLLM engines.
"""


class SamplingParams:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)
