"""Tiny random models for tests whose weights do not matter (shapes, padding, plumbing). Imported by name: conftest
puts this folder on sys.path (no tests/__init__.py on purpose)."""

from transformers import LlamaConfig

TINY_LLAMA = dict(
    vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=512,
)  # fmt: skip


def tiny_llama_config(**overrides) -> LlamaConfig:
    """A 2-layer, 32-wide Llama config; each test overrides only what it needs (vocab of a real tokenizer, ...)."""
    return LlamaConfig(**{**TINY_LLAMA, **overrides})


def tiny_policy_config(tokenizer, **overrides) -> LlamaConfig:
    """A 3-layer causal-LM config over a real tokenizer's vocabulary (SmolLM2's chat template, eos and pad), for
    policy tests where the weights do not matter."""
    policy = dict(
        TINY_LLAMA, vocab_size=len(tokenizer), num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1,
        tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    return LlamaConfig(**{**policy, **overrides})
