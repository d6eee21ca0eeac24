"""The comparison probe (rl/app/comparison_probe.py): its rows put the loss on exactly the decisions, its
accuracy counts what the model predicts, and training on drills lowers their loss."""

from __future__ import annotations

import json
import shutil

import pytest

from data.worked_comparisons import comparison_drill


@pytest.fixture(scope="module")
def probe_setup(tiny_world, tiny_checkpoint):
    from rollouts.model_loading import load_tokenizer

    tokenizer = load_tokenizer(tiny_checkpoint)
    comparisons = [q for q in tiny_world.splits["train"] if q.structure == "parallel"]
    return tokenizer, comparisons


@pytest.mark.parametrize("form", ["side_by_side", "verdict", "digits", "year_first"])
def test_rows_carry_the_loss_on_each_steps_decision_tokens_only(probe_setup, form):
    from rl.app.comparison_probe import probe_rows

    tokenizer, comparisons = probe_setup
    for row in probe_rows(comparisons, tokenizer, 12, form, seed=1):
        text = tokenizer.decode(row["input_ids"])
        assert text.startswith("<think> ") and len(row["places"]) == len(row["input_ids"])
        decided = tokenizer.decode([t for t, place in zip(row["input_ids"], row["places"]) if place >= 0])
        winners = [" ".join(step.split()[-3:]) for step in text.split(" vs ")[1:]]
        verdicts = decided.count(" that ") + decided.count(" old ")
        assert verdicts == (len(winners) if form in ("verdict", "digits") else 0)
        # each decision piece's places count 0, 1, 2, ... from its first token
        starts = [i for i, place in enumerate(row["places"]) if place == 0]
        assert len(starts) == text.count(" vs ") and all(row["places"][i - 1] == -1 for i in starts)
    with pytest.raises(ValueError, match="--form must be one of"):
        probe_rows(comparisons, tokenizer, 1, "compare", seed=1)


def test_year_first_writes_every_entry_year_first_and_the_winner_as_its_entry():
    from rl.app.comparison_probe import year_first_drill

    pieces = year_first_drill(["Ann Lee", "Bo Kay", "Cy Do"], [1950, 1990, 1970], earliest=False)
    assert "".join(text for text, _ in pieces) == (
        "1950 Ann Lee , 1990 Bo Kay vs 1950 Ann Lee last 1990 Bo Kay , "
        "1970 Cy Do vs 1990 Bo Kay last 1990 Bo Kay")
    side_by_side = comparison_drill(["Ann Lee", "Bo Kay", "Cy Do"], [1950, 1990, 1970], False, "side_by_side")
    decisions = [text for text, decided in pieces if decided]
    assert decisions == [text for text, decided in side_by_side if decided]


def test_accuracy_counts_the_models_predictions_and_training_lowers_the_loss(probe_setup, tiny_checkpoint):
    import torch
    from transformers import Qwen2ForCausalLM

    from rl.app.comparison_probe import decision_accuracy, probe_rows, run_probe

    tokenizer, comparisons = probe_setup
    rows = probe_rows(comparisons, tokenizer, 16, "digits", seed=2)

    class Oracle(torch.nn.Module):  # predicts every next token right: every decision counts as right
        training = False

        def forward(self, input_ids, position_ids):
            logits = torch.zeros(*input_ids.shape, len(tokenizer))
            logits[:, :-1].scatter_(2, input_ids[:, 1:, None], 1.0)
            return type("Output", (), {"logits": logits})

        def train(self, mode=True):
            return self

    perfect = decision_accuracy(Oracle(), rows, tokenizer.pad_token_id)
    assert perfect["tokens"] == 1.0 and perfect["rows"] == 1.0 and set(perfect["by_place"].values()) == {1.0}
    torch.manual_seed(0)
    model = Qwen2ForCausalLM.from_pretrained(tiny_checkpoint)
    history = run_probe(rows, rows, model, tokenizer.pad_token_id, steps=40, learning_rate=3e-3, batch_size=8,
                        eval_every=1)
    assert [row["step"] for row in history] == list(range(1, 41))
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    assert history[-1]["tokens"] > history[0]["tokens"] and 0.0 <= history[-1]["rows"] <= 1.0


def test_main_trains_a_fresh_model_and_writes_its_history(tmp_path, tiny_checkpoint):
    from data.config import WorldConfig
    from data.world import write_world
    from rl.app.comparison_probe import main

    write_world(tmp_path / "run" / "world", WorldConfig(seed=0, num_entities_per_kind=20, num_train=120,
                                                         num_validation=20, num_test=40))
    shutil.copytree(tiny_checkpoint, tmp_path / "run" / "base")
    out = tmp_path / "probe.json"
    result = main(["--run", str(tmp_path / "run"), "--form", "verdict", "--steps", "4", "--eval-every", "2",
                   "--train-drills", "40", "--test-drills", "10", "--batch-size", "4", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert [row["step"] for row in result["history"]] == [2, 4] and result["settings"]["form"] == "verdict"


def test_main_can_start_from_the_runs_base_model(tmp_path, tiny_checkpoint, monkeypatch):
    import torch
    from transformers import Qwen2ForCausalLM

    from data.config import WorldConfig
    from data.world import write_world
    from rl.app import comparison_probe

    write_world(tmp_path / "run" / "world", WorldConfig(seed=0, num_entities_per_kind=20, num_train=120,
                                                         num_validation=20, num_test=40))
    shutil.copytree(tiny_checkpoint, tmp_path / "run" / "base")
    saved = Qwen2ForCausalLM.from_pretrained(tmp_path / "run" / "base").state_dict()
    started = []  # the weights each probe starts from

    def record_start(train_rows, test_rows, model, *args, **kwargs):
        started.append({name: tensor.clone() for name, tensor in model.state_dict().items()})
        return []

    monkeypatch.setattr(comparison_probe, "run_probe", record_start)
    arguments = ["--run", str(tmp_path / "run"), "--steps", "1", "--train-drills", "4", "--test-drills", "2"]
    comparison_probe.main([*arguments, "--init", "base"])
    comparison_probe.main([*arguments, "--seed", "3"])  # fresh, the default
    assert all(torch.equal(started[0][name], tensor) for name, tensor in saved.items())
    assert not torch.equal(started[1]["model.embed_tokens.weight"], saved["model.embed_tokens.weight"])


def test_main_measures_a_warm_start_without_training_and_saves_what_it_probed(tmp_path, tiny_checkpoint):
    import torch
    from transformers import Qwen2ForCausalLM

    from data.config import WorldConfig
    from data.world import write_world
    from rl.app.comparison_probe import main

    run = tmp_path / "run"
    write_world(run / "world", WorldConfig(seed=0, num_entities_per_kind=20, num_train=120, num_validation=20,
                                           num_test=40))
    shutil.copytree(tiny_checkpoint, run / "base")
    arguments = ["--run", str(run), "--form", "side_by_side", "--train-drills", "8", "--test-drills", "6"]
    with pytest.raises(SystemExit):  # no warm-start yet
        main([*arguments, "--init", "sft", "--steps", "0"])
    shutil.copytree(tiny_checkpoint, run / "sft")
    measured = main([*arguments, "--init", "sft", "--steps", "0", "--save", str(tmp_path / "kept")])
    (only,) = measured["history"]
    assert only["step"] == 0 and 0.0 <= only["rows"] <= only["tokens"] <= 1.0
    kept = Qwen2ForCausalLM.from_pretrained(tmp_path / "kept")
    saved = Qwen2ForCausalLM.from_pretrained(run / "sft")
    assert all(torch.equal(tensor, saved.state_dict()[name]) for name, tensor in kept.state_dict().items())
    trained = main([*arguments, "--init", "sft", "--steps", "2", "--eval-every", "2", "--batch-size", "4",
                    "--save", str(tmp_path / "trained")])
    assert [row["step"] for row in trained["history"]] == [2]
    moved = Qwen2ForCausalLM.from_pretrained(tmp_path / "trained")
    assert not torch.equal(moved.model.embed_tokens.weight, saved.model.embed_tokens.weight)
    assert (tmp_path / "trained" / "tokenizer.json").is_file()
