"""Shared fixtures: a tiny generated world and a tiny saved model built from it (session scope).

Everything is built locally in a temporary folder; nothing is downloaded.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

def _world_texts(world) -> list[str]:
    texts = [document["contents"] for document in world.documents]
    for questions in world.splits.values():
        texts.extend(question.question for question in questions)
        texts.extend(sub for question in questions for sub in question.sub_questions)
    return texts


@pytest.fixture(scope="session")
def tiny_world():
    """A small generated world: 20 entities per kind, 120/20/40 train/validation/test questions."""
    from data.config import WorldConfig
    from data.world import generate_world

    return generate_world(WorldConfig(seed=0, num_entities_per_kind=20, num_train=120, num_validation=20, num_test=40))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_world):
    """Path of a saved, untrained tiny Qwen2 model + tokenizer trained on the tiny world."""
    import torch

    from rl.app.modeling import create_tiny_checkpoint
    from rl.config import TinyModelConfig

    torch.set_num_threads(1)
    texts = _world_texts(tiny_world)
    tiny = TinyModelConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           intermediate_size=128, max_position_embeddings=1024, vocab_size=1024)
    return create_tiny_checkpoint(tmp_path_factory.mktemp("tiny_model"), texts, tiny, seed=0)
