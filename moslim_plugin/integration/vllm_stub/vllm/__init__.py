"""Stand-in for vLLM (CUDA-only, not installable here); see moslim_plugin/integration/vllm_stub/__init__.py.

OpenRLHF imports only `vllm.SamplingParams`, `vllm.inputs.TokensPrompt` and `vllm.utils.random_uuid` at import time.
Nothing here generates text: no vLLM engine is ever created where this stand-in is on the path.
"""


class SamplingParams:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)
