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


QWEN2_TOKENIZER_ARCHIVE = os.path.join(os.path.dirname(__file__), "fixtures", "qwen2-tokenizer.tgz")
QWEN2_VOCABULARY_SIZE = 151936
# Qwen2.5's chat template (tests/fixtures/README.md): tools in the system message, tool messages as
# <tool_response> blocks in a user turn, assistant tool calls as <tool_call> blocks.
QWEN25_CHAT_TEMPLATE = os.path.join(os.path.dirname(__file__), "fixtures", "qwen2.5-chat-template.jinja")


@pytest.fixture(scope="session")
def qwen25_chat_template() -> str:
    with open(QWEN25_CHAT_TEMPLATE) as template_file:
        return template_file.read()


@pytest.fixture(scope="session")
def qwen2_checkpoint(tmp_path_factory):
    """Path of a stock-shaped model folder: the real Qwen2 tokenizer (tests/fixtures) and a random tiny Qwen2.

    The model has the tokenizer's whole vocabulary (151,936 rows) but width 64 and 2 layers (head size 32,
    which vLLM's CPU attention also supports), untied embeddings, and is saved with save_pretrained next
    to the tokenizer, so rollouts.model_loading.load_model_and_tokenizer loads it like a real checkpoint.
    """
    import tarfile

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    folder = tmp_path_factory.mktemp("qwen2")
    with tarfile.open(QWEN2_TOKENIZER_ARCHIVE) as archive:
        archive.extractall(folder, filter="data")
    model_path = folder / "qwen2-tok"
    config = Qwen2Config(vocab_size=QWEN2_VOCABULARY_SIZE, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=2048, tie_word_embeddings=False,
                         bos_token_id=151643, eos_token_id=151643)
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(model_path)
    return model_path
