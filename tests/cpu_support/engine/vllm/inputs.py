"""`vllm.inputs.TokensPrompt`: a prompt given as token ids (vLLM's is a TypedDict too)."""

from typing import TypedDict


class TokensPrompt(TypedDict, total=False):
    prompt_token_ids: list[int]
    multi_modal_data: dict
