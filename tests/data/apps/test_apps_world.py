"""The apps world: seeded and deterministic, typed tools, tasks whose gold rounds match their structure,
disjoint splits, and verifiers that accept the gold end state and reject corrupted ones."""

from __future__ import annotations

import json

import jsonschema
import pytest

from data.apps.state import USER_EMAIL, WORK_HOURS
from data.apps.tasks import APP_STRUCTURES, TASK_FAMILIES, AppTask
from data.apps.tools import APP_TOOLS, AppError, call_app_tool
from data.apps.verify import gold_end_state, replay_rounds, verify_task
from data.apps.world import apps_questions, base_state_of, generate_apps_world, load_apps_world, write_apps_world
from data.config import AppsWorldConfig
from data.errors import DataError
from data.types import PARTITION_KEY

SMALL = AppsWorldConfig(seed=3, num_train=90, num_validation=30, num_test=45)


@pytest.fixture(scope="module")
def world():
    return generate_apps_world(SMALL)


def all_tasks(world) -> list[AppTask]:
    return [task for tasks in world.splits.values() for task in tasks]


def test_the_same_config_gives_the_same_world_and_another_seed_another(world):
    again = generate_apps_world(SMALL)
    assert again.base_state == world.base_state
    assert [task.to_row() for task in all_tasks(again)] == [task.to_row() for task in all_tasks(world)]
    other = generate_apps_world(AppsWorldConfig(seed=4, num_train=90, num_validation=30, num_test=45))
    assert other.base_state["contacts"] != world.base_state["contacts"]


def test_there_are_15_to_30_typed_tools_over_six_apps_each_with_a_valid_object_schema():
    assert 15 <= len(APP_TOOLS) <= 30
    assert {name.split("_")[0] for name in APP_TOOLS} == {"contacts", "calendar", "mail", "files", "shop",
                                                           "calculator"}
    for tool in APP_TOOLS.values():
        jsonschema.Draft202012Validator.check_schema(tool.parameters)
        assert tool.parameters["type"] == "object" and tool.parameters["additionalProperties"] is False
        assert tool.schema()["function"]["name"] == tool.name and tool.description


def test_tools_refuse_bad_arguments_and_impossible_requests_with_app_errors(world):
    state = json.loads(json.dumps(world.base_state))
    with pytest.raises(AppError, match="bad arguments for calendar_free_hours"):
        call_app_tool(state, "calendar_free_hours", {"email": "x@y", "day": "two"})
    with pytest.raises(AppError, match="unknown tool 'calendar_teleport'"):
        call_app_tool(state, "calendar_teleport", {})
    assert call_app_tool(state, "calculator_sum", {"numbers": [12, 30, 5]}) == {"sum": 47}
    with pytest.raises(AppError, match="bad arguments for calculator_sum"):
        call_app_tool(state, "calculator_sum", {"numbers": []})
    with pytest.raises(AppError, match="no contact with email"):
        call_app_tool(state, "mail_send", {"to": "nobody@nowhere", "subject": "s", "body": "b"})
    email = next(iter(state["contacts"].values()))["email"]
    busy_hour = next(hour for hour in WORK_HOURS if hour not in call_app_tool(state, "calendar_free_hours",
                                                                              {"email": email, "day": 1}))
    with pytest.raises(AppError, match="busy"):
        call_app_tool(state, "calendar_create_event", {"title": "t", "day": 1, "hour": busy_hour, "attendees": [email]})
    assert state == world.base_state  # refused requests changed nothing


def test_mutating_tools_change_the_state_and_reads_do_not(world):
    state = json.loads(json.dumps(world.base_state))
    sku, product = next((sku, dict(product)) for sku, product in state["products"].items() if product["stock"] >= 2)
    order = call_app_tool(state, "shop_place_order", {"sku": sku, "quantity": 2, "ship_to": USER_EMAIL})
    assert state["products"][sku]["stock"] == product["stock"] - 2 and order["total"] == 2 * product["price"]
    assert call_app_tool(state, "shop_cancel_order", {"order_id": order["id"]})["refund"] == order["total"]
    assert state["products"][sku]["stock"] == world.base_state["products"][sku]["stock"]
    before = json.dumps(state, sort_keys=True)
    for tool in APP_TOOLS.values():
        assert tool.mutates or tool.name.split("_", 1)[1].startswith(("search", "get", "list", "read", "free",
                                                                                       "sum"))
    call_app_tool(state, "shop_search", {"query": product["name"].split()[0]})
    call_app_tool(state, "calculator_sum", {"numbers": [1, 2]})
    call_app_tool(state, "files_list", {"folder": "/docs"})
    assert json.dumps(state, sort_keys=True) == before


def test_every_split_has_every_structure_and_the_gold_rounds_match_it(world):
    assert {family.structure for family in TASK_FAMILIES.values()} == set(APP_STRUCTURES)
    for split, tasks in world.splits.items():
        assert {task.structure for task in tasks} == set(APP_STRUCTURES), split
    for task in all_tasks(world):
        sizes = [len(calls) for calls in task.gold_rounds]
        if task.structure == "independent":
            assert len(sizes) == 1 and sizes[0] >= 2, task.id
        elif task.structure == "chain":
            assert len(sizes) >= 2 and set(sizes) == {1}, task.id
        else:
            assert len(sizes) >= 2 and max(sizes) >= 2, task.id
        assert task.min_rounds == len(sizes) and task.num_calls == sum(sizes)
        assert task.to_question().metadata["app_task"]["id"] == task.id


def test_splits_are_disjoint_and_sized_as_configured(world):
    sizes = {split: len(tasks) for split, tasks in world.splits.items()}
    assert sizes == {"train": 90, "validation": 30, "test": 45}
    keys = [json.dumps([task.family, task.gold_rounds], sort_keys=True) for task in all_tasks(world)]
    assert len(set(keys)) == len(keys)
    assert len({task.id for task in all_tasks(world)}) == len(keys)


def test_the_verifier_accepts_every_gold_end_state_with_its_answer(world):
    for task in all_tasks(world):
        verdict = verify_task(task, world.base_state, gold_end_state(task, world.base_state), task.answers[0])
        assert verdict.success, (task.id, verdict.problems)


def test_the_verifier_judges_the_end_state_not_the_call_order(world):
    task = next(task for task in all_tasks(world) if task.family == "send_notice")
    reversed_round = [list(reversed(task.gold_rounds[0]))]
    final_state, _ = replay_rounds(world.base_state, reversed_round)  # sent-mail ids come out swapped
    extra_reads = [[{"name": "files_list", "arguments": {"folder": "/docs"}}]] + task.gold_rounds
    assert verify_task(task, world.base_state, final_state, "Done.").success
    assert verify_task(task, world.base_state, replay_rounds(world.base_state, extra_reads)[0], "done").success


def corrupted(state: dict, how: str) -> dict:
    state = json.loads(json.dumps(state))
    if how == "extra_mail":
        state["sent"]["s999"] = {"id": "s999", "to": USER_EMAIL, "subject": "oops", "body": "oops"}
    elif how == "dropped_write":
        for collection in ("events", "sent", "orders", "files"):
            created = [key for key in state[collection] if key not in BASE_KEYS[collection]]
            if created:
                del state[collection][created[-1]]
                break
        else:  # the task cancelled an order: undo it
            next(order for order in state["orders"].values() if order["status"] == "cancelled")["status"] = "placed"
    elif how == "deleted_file":
        del state["files"][sorted(state["files"])[0]]
    elif how == "changed_stock":
        next(iter(state["products"].values()))["stock"] += 1
    return state


BASE_KEYS: dict[str, set] = {}


@pytest.mark.parametrize("how", ["extra_mail", "dropped_write", "deleted_file", "changed_stock"])
def test_the_verifier_rejects_corrupted_end_states(world, how):
    BASE_KEYS.update({collection: set(world.base_state[collection]) for collection in world.base_state})
    acting = [task for task in all_tasks(world) if any(APP_TOOLS[call["name"]].mutates
                                                       for calls in task.gold_rounds for call in calls)]
    assert {task.structure for task in acting} == set(APP_STRUCTURES)
    for task in [task for structure in APP_STRUCTURES for task in acting if task.structure == structure][::4]:
        bad_state = corrupted(gold_end_state(task, world.base_state), how)
        verdict = verify_task(task, world.base_state, bad_state, task.answers[0])
        assert not verdict.success and not verdict.state_ok and verdict.answer_ok, (task.id, how)
        assert verdict.problems and all(line.split(":")[0] in world.base_state for line in verdict.problems)


def test_the_verifier_rejects_a_wrong_answer_and_a_missing_one(world):
    task = next(task for task in all_tasks(world) if task.family == "stock_total")
    end_state = gold_end_state(task, world.base_state)
    wrong = verify_task(task, world.base_state, end_state, str(int(task.answers[0]) + 1))
    assert wrong.state_ok and not wrong.answer_ok and not wrong.success
    assert wrong.problems == [f"answer: got '{int(task.answers[0]) + 1}', expected one of {task.answers}"]
    assert not verify_task(task, world.base_state, end_state, None).success


def test_the_world_round_trips_through_its_files(tmp_path):
    config = AppsWorldConfig(seed=1, num_train=12, num_validation=6, num_test=6)
    write_apps_world(tmp_path, config)
    loaded, generated = load_apps_world(tmp_path), generate_apps_world(config)
    assert loaded.base_state == generated.base_state
    assert {split: [task.to_row() for task in tasks] for split, tasks in loaded.splits.items()} == {
        split: [task.to_row() for task in tasks] for split, tasks in generated.splits.items()}
    (tmp_path / "test.jsonl").write_text('{"id": "x", "instruction": "i"}\n')
    with pytest.raises(DataError, match=r"test\.jsonl:1: not an apps task row"):
        load_apps_world(tmp_path)


def test_training_worlds_redraw_every_record_and_only_training_tasks_act_on_them(world, tmp_path):
    config = AppsWorldConfig(seed=3, num_train=90, num_validation=30, num_test=45, train_worlds=2)
    write_apps_world(tmp_path, config)
    redrawn = load_apps_world(tmp_path)
    assert redrawn.base_state == world.base_state and sorted(redrawn.world_states) == ["w1", "w2"]
    for split in ("validation", "test"):  # held-out tasks are those of the world without training worlds
        assert [task.to_row() for task in redrawn.splits[split]] == [task.to_row() for task in world.splits[split]]
    by_world = {name: [task for task in redrawn.splits["train"] if task.world == name] for name in ("", "w1", "w2")}
    assert [len(tasks) for tasks in by_world.values()] == [30, 30, 30]  # num_train split evenly
    base_names = {contact["name"] for contact in world.base_state["contacts"].values()}
    for name in ("w1", "w2"):
        state = redrawn.world_states[name]
        assert not base_names & {contact["name"] for contact in state["contacts"].values()}
        assert {task.structure for task in by_world[name]} == set(APP_STRUCTURES)
        for task in by_world[name]:  # the gold rounds hold in the task's own world
            assert task.id.startswith(f"apps-train-{name}-") and redrawn.state_of(task) is state
            assert verify_task(task, state, gold_end_state(task, state), task.answers[0]).success
    questions = apps_questions(by_world["w1"][:1] + by_world[""][:1], tmp_path)
    assert questions[0].metadata[PARTITION_KEY] == "w1" and PARTITION_KEY not in questions[1].metadata
    assert [base_state_of(question) for question in questions] == [redrawn.world_states["w1"], redrawn.base_state]
    with pytest.raises(DataError, match="acts on world 'w1', which this apps world does not hold"):
        world.state_of(by_world["w1"][0])


def test_shared_names_keep_every_identity_across_worlds_and_seeds_and_redraw_the_records():
    config = AppsWorldConfig(seed=3, num_train=90, num_validation=30, num_test=45, train_worlds=2, names="shared")
    shared = generate_apps_world(config)
    fresh = generate_apps_world(AppsWorldConfig(seed=8, num_train=30, num_validation=10, num_test=15, names="shared"))
    states = [shared.base_state, *shared.world_states.values(), fresh.base_state]

    def identities(state):
        return ({(c["id"], c["name"], c["email"], c["phone"]) for c in state["contacts"].values()},
                {(p["sku"], p["name"]) for p in state["products"].values()})

    assert all(identities(state) == identities(states[0]) for state in states)
    for state in states[1:]:  # the records around the identities are drawn anew in every world
        stock = [(state["products"][sku]["stock"], states[0]["products"][sku]["stock"]) for sku in state["products"]]
        assert sum(mine != base for mine, base in stock) >= len(stock) // 2
        assert state["events"] != states[0]["events"]
    for task in shared.splits["train"]:  # the gold rounds hold in each task's own world
        state = shared.state_of(task)
        assert verify_task(task, state, gold_end_state(task, state), task.answers[0]).success


def test_world_tasks_from_named_families_add_to_the_base_worlds_and_cover_the_test_note_paths(world):
    config = AppsWorldConfig(seed=3, num_train=90, num_validation=30, num_test=45, train_worlds=2,
                             world_tasks=40, world_families=["cancel_from_note"])
    redrawn = generate_apps_world(config)
    base_train = [task for task in redrawn.splits["train"] if not task.world]
    assert [task.to_row() for task in base_train] == [task.to_row() for task in world.splits["train"]]
    for split in ("validation", "test"):
        assert [task.to_row() for task in redrawn.splits[split]] == [task.to_row()
                                                                    for task in world.splits[split]]
    for name in ("w1", "w2"):
        tasks = [task for task in redrawn.splits["train"] if task.world == name]
        assert len(tasks) == 40 and {task.family for task in tasks} == {"cancel_from_note"}
        assert [task.id for task in tasks] == [f"apps-train-{name}-{index:05d}" for index in range(40)]
        state = redrawn.state_of(task := tasks[0])
        assert verify_task(task, state, gold_end_state(task, state), task.answers[0]).success

    def note_paths(tasks):
        return {task.gold_rounds[0][0]["arguments"]["path"]
                for task in tasks if task.family == "cancel_from_note"}

    test_paths = note_paths(world.splits["test"])
    assert test_paths and not test_paths & note_paths(base_train)  # held out of the base world's training
    covered = test_paths & note_paths([task for task in redrawn.splits["train"] if task.world])
    assert len(covered) >= len(test_paths) // 2  # 40 of 96 notes per world: most test paths recur
    files = world.base_state["files"]
    notes = [(redrawn.world_states[name]["files"][path]["content"], files[path]["content"])
             for name in ("w1", "w2") for path in sorted(covered)]
    assert sum(mine != base for mine, base in notes) >= len(notes) - 1  # the same path names another order


def test_a_notes_redraw_keeps_the_base_world_but_for_what_each_note_names(world):
    config = AppsWorldConfig(seed=3, num_train=90, num_validation=30, num_test=45, train_worlds=2,
                             world_tasks=20, world_families=["cancel_from_note"], world_redraw="notes")
    redrawn = generate_apps_world(config)
    base = world.base_state
    assert redrawn.base_state == base
    for name in ("w1", "w2"):
        state = redrawn.world_states[name]
        assert {key: value for key, value in state.items() if key != "files"} == {
            key: value for key, value in base.items() if key != "files"}
        assert state["files"].keys() == base["files"].keys()
        changed = {path for path in base["files"] if state["files"][path] != base["files"][path]}
        notes = {path for path in base["files"] if path.startswith("/notes/")}
        assert changed <= notes and len(changed) >= len(notes) - 3
        named = [state["files"][path]["content"].split()[1] for path in notes if "/order-" in path]
        assert len(set(named)) == len(named) and set(named) <= set(base["orders"])  # distinct base orders
        for task in (task for task in redrawn.splits["train"] if task.world == name):
            assert verify_task(task, state, gold_end_state(task, state), task.answers[0]).success
    assert redrawn.world_states["w1"]["files"] != redrawn.world_states["w2"]["files"]


@pytest.mark.parametrize("overrides, message", [
    ({"world_families": ["cancel_from_notes"]}, r"data.apps.world_families names \['cancel_from_notes'\]"),
    ({"world_families": ["cancel_from_note"], "world_tasks": 97}, "lower data.apps.world_tasks"),  # 96 notes
    ({"world_tasks": -1}, "data.apps.world_tasks is -1"),
    ({"world_redraw": "records"}, "data.apps.world_redraw is 'records'; valid: all, notes"),
])
def test_training_world_tasks_that_cannot_be_drawn_are_refused_by_name(overrides, message):
    config = AppsWorldConfig(seed=3, num_train=30, num_validation=10, num_test=15, train_worlds=1,
                             **{"world_tasks": 10, **overrides})
    with pytest.raises(DataError, match=message):
        generate_apps_world(config)


def test_family_weights_shape_the_training_tasks_and_leave_the_held_out_splits_as_they_were(world):
    weights = {"stock_total": 30, "schedule_meeting": 20, "order_from_note": 0}
    weighted = generate_apps_world(AppsWorldConfig(seed=3, num_train=90, num_validation=30, num_test=45,
                                                   train_families=weights))
    for split in ("validation", "test"):
        assert [task.to_row() for task in weighted.splits[split]] == [task.to_row()
                                                                     for task in world.splits[split]]
    train = weighted.splits["train"]
    counts = {name: sum(task.family == name for task in train) for name in TASK_FAMILIES.names()}
    # 90 x weight / 57 (30 + 20 + 0 + seven families weighing 1), largest remainders first
    assert counts["stock_total"] == 47 and counts["schedule_meeting"] == 31 and counts["order_from_note"] == 0
    others = sorted(counts[name] for name in counts if name not in weights)
    assert others == [1, 1, 2, 2, 2, 2, 2]  # equal remainders: the families registered first
    assert [task.id for task in train] == [f"apps-train-{index:05d}" for index in range(90)]
    held_out = {task.instruction for split in ("validation", "test") for task in weighted.splits[split]}
    assert not held_out & {task.instruction for task in train}
    for task in train[:20]:
        state = weighted.state_of(task)
        assert verify_task(task, state, gold_end_state(task, state), task.answers[0]).success


def test_family_counts_round_to_the_total():
    from data.apps.tasks import family_counts

    assert family_counts(10, {}) == dict.fromkeys(TASK_FAMILIES.names(), 1)
    counts = family_counts(1000, {"stock_total": 2.5, "send_notice": 0})
    assert sum(counts.values()) == 1000 and counts["send_notice"] == 0
    others = sorted(counts[name] for name in counts if name not in ("stock_total", "send_notice"))
    assert counts["stock_total"] == 238 and others == [95] * 6 + [96] * 2  # 1000 / 10.5 = 95.2 each


@pytest.mark.parametrize("weights, message", [
    ({"stock_totals": 2}, r"data.apps.train_families names \['stock_totals'\]"),
    ({"stock_total": -1}, "weights must be >= 0"),
    (dict.fromkeys(TASK_FAMILIES.names(), 0), "with a positive sum"),
    ({"cancel_from_note": 1000}, "lower data.apps.train_families"),  # 199 asked, 96 order notes in the world
])
def test_family_weights_that_cannot_be_drawn_are_refused_by_name(weights, message):
    config = AppsWorldConfig(seed=3, num_train=200, num_validation=10, num_test=15, train_families=weights)
    with pytest.raises(DataError, match=message):
        generate_apps_world(config)


def test_an_unknown_apps_names_mode_is_refused_by_name():
    with pytest.raises(DataError, match="data.apps.names is 'global'"):
        generate_apps_world(AppsWorldConfig(seed=3, num_train=30, num_validation=10, num_test=15, names="global"))


def test_the_default_world_gives_every_family_at_least_half_its_even_share_of_the_training_tasks():
    # A family's distinct tasks are bounded by the world (one cancel_from_note task per order note, one
    # reply_to_sender task per sender and body); the test and validation splits are drawn first.
    config = AppsWorldConfig(num_validation=50)
    train = generate_apps_world(config).splits["train"]
    counts = {name: sum(task.family == name for task in train) for name in TASK_FAMILIES.names()}
    families = {structure: [name for name in counts if TASK_FAMILIES[name].structure == structure]
                for structure in APP_STRUCTURES}
    for name, count in counts.items():
        structure = TASK_FAMILIES[name].structure
        even_share = config.num_train * config.structure_mix[structure] / len(families[structure])
        assert count >= even_share / 2, (name, count, even_share)
