"""model.tiny.whole_identifiers on the apps world: every name a task's gold calls copy (a contact's name or e-mail
address, a SKU) is one token of the tiny tokenizer, in the instruction and in the call alike; file paths and order
ids are pieces whose varying part (the number) is the same tokens wherever they stand; with the key off the
tokenizer has no such tokens."""

from __future__ import annotations

import json

from data.apps.world import generate_apps_world
from data.config import AppsWorldConfig
from rl.app.apps_env import apps_identifiers, apps_tokenizer_texts
from rl.app.modeling import build_tokenizer
from rl.app.sft import WarmStartSource, ensure_warm_start
from rl.config import load_config
from rollouts.model_loading import load_model_and_tokenizer

WORLD = generate_apps_world(AppsWorldConfig(seed=3, num_train=40, num_validation=10, num_test=20))


def copied_arguments(task) -> list[str]:
    """The string arguments of the task's gold calls that come from the base state (not written text)."""
    values = []
    for calls in task.gold_rounds:
        for call in calls:
            for name, value in call["arguments"].items():
                for item in value if isinstance(value, list) else [value]:
                    if name in ("sku", "email", "to", "from_email", "ship_to", "attendees", "text"):
                        values.append(item)
    return values


def numbered_arguments(task) -> list[str]:
    """The gold calls' file paths of the base state and order ids."""
    return [value for calls in task.gold_rounds for call in calls for name, value in call["arguments"].items()
            if name == "order_id" or (name == "path" and value in WORLD.base_state["files"])]


def test_every_copied_name_is_one_token_in_the_instruction_and_in_the_call():
    identifiers = set(apps_identifiers(WORLD))
    tokenizer = build_tokenizer(apps_tokenizer_texts(WORLD), vocab_size=2048, whole_tokens=identifiers)
    checked = 0
    for task in WORLD.splits["train"] + WORLD.splits["test"]:
        for value in copied_arguments(task):
            assert value in identifiers, (task.family, value)
            call_tokens = tokenizer.tokenize(json.dumps({"arguments": {"x": value}}))
            assert value in call_tokens, (task.family, value)
            if value in task.instruction:
                assert value in tokenizer.tokenize(task.instruction), (task.family, value)
            checked += 1
    assert checked > 100


def test_paths_and_order_ids_are_pieces_whose_number_is_the_same_tokens_in_the_text_and_in_the_call():
    identifiers = set(apps_identifiers(WORLD))
    tokenizer = build_tokenizer(apps_tokenizer_texts(WORLD), vocab_size=2048, whole_tokens=identifiers,
                                number_space="apart")
    checked = 0
    for task in WORLD.splits["train"] + WORLD.splits["test"]:
        for value in numbered_arguments(task):
            assert value not in identifiers
            number = "".join(character for character in value if character.isdigit())  # "0084", "74"
            number_tokens = tokenizer.tokenize(number)
            call_tokens = tokenizer.tokenize(json.dumps({"arguments": {"x": value}}))
            where = task.instruction if value in task.instruction else f"Order {value} is no longer needed."
            text_tokens = tokenizer.tokenize(where)
            for tokens in (call_tokens, text_tokens):
                assert any(tokens[start:start + len(number_tokens)] == number_tokens for start in range(len(tokens))), \
                    (value, tokens, number_tokens)
            checked += 1
    assert checked >= 5


def test_whole_identifiers_off_builds_the_plain_tokenizer(tmp_path):
    texts, identifiers = apps_tokenizer_texts(WORLD), apps_identifiers(WORLD)
    source = WarmStartSource(questions=[], texts=texts, identifiers=identifiers)
    sizes = {}
    for flag in (True, False):
        config = load_config("configs/apps_quickstart.yaml", [f"experiment.output_dir={tmp_path / str(flag)}",
                                                              "sft.enabled=false", "model.tiny.pretrain_steps=0",
                                                              f"model.tiny.whole_identifiers={flag}"])
        model, tokenizer = load_model_and_tokenizer(str(ensure_warm_start(config, source)))
        sizes[flag] = len(tokenizer)
        assert model.config.vocab_size == len(tokenizer)
        assert (identifiers[0] in tokenizer.tokenize(f" {identifiers[0]}")) is flag
    assert sizes[True] - sizes[False] == len(identifiers)


def test_with_training_worlds_every_worlds_identifiers_and_tasks_feed_the_tokenizer():
    world = generate_apps_world(AppsWorldConfig(seed=3, num_train=150, num_validation=10, num_test=20, train_worlds=2))
    identifiers, texts = set(apps_identifiers(world)), apps_tokenizer_texts(world)
    for state in world.all_states():
        assert {contact["email"] for contact in state["contacts"].values()} <= identifiers
        assert set(state["products"]) <= identifiers
    task = next(task for task in world.splits["train"] if task.world == "w2" and task.family == "order_from_note")
    note = world.world_states["w2"]["files"][task.gold_rounds[0][0]["arguments"]["path"]]["content"]
    assert task.instruction in texts and note in texts  # its call's result read in its own world
    # each training world adds its own contacts' names and addresses and its own SKUs
    config = AppsWorldConfig()
    assert len(identifiers) - len(apps_identifiers(WORLD)) >= 2 * (2 * config.num_people + config.num_products)
