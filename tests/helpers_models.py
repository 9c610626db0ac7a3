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
