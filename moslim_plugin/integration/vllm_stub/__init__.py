"""A stand-in for vLLM (CUDA-only, not installable on CPU machines): the folder `PATH` holds a `vllm` package.

OpenRLHF's `openrlhf.trainer.ray` package and `cli/train_ppo_ray.py` import vLLM at module level, using only these
names at import time: `vllm.SamplingParams`, `vllm.inputs.TokensPrompt`, `vllm.utils.random_uuid`. Put `PATH` on
`sys.path` (and on PYTHONPATH for Ray workers) only where vLLM is missing and no vLLM engine is ever created: the
local RL driver (for OpenRLHF's advantage code), tests and bench scripts. Nothing here generates text.
"""

import os

PATH = os.path.dirname(os.path.abspath(__file__))
