"""The tiny from-config Qwen2 that trainer, batch and reliability tests build in memory (nothing downloaded).

One builder so every test folder makes its model the same way; the arguments are the knobs the tests
vary. Importable as `from tiny_models import tiny_qwen2` from any folder under tests/: pytest (default
"prepend" import mode, no __init__.py in tests/) puts tests/ on sys.path when it loads tests/conftest.py.
For a tokenizer-backed model saved to disk, use the `tiny_checkpoint` fixture of tests/conftest.py.
"""

from __future__ import annotations

import torch
import transformers


def tiny_qwen2(
    vocab_size: int = 64,
    hidden_size: int = 32,
    num_hidden_layers: int = 2,
    seed: int = 0,
    tie_word_embeddings: bool = True,
) -> transformers.Qwen2ForCausalLM:
    """A randomly initialised Qwen2 (4 query heads, 2 key/value heads, MLP width 2 * hidden_size).

    `seed` fixes the initial weights, so two calls with the same arguments give identical models.
    """
    torch.manual_seed(seed)
    config = transformers.Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=128,  # longer than any test sequence; rotary embeddings have no weights
        tie_word_embeddings=tie_word_embeddings,
    )
    return transformers.Qwen2ForCausalLM(config)
