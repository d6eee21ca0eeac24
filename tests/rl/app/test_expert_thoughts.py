"""The expert's <think> (sft.expert_think): the text on hand-made questions, its agreement with the gold answer on
every generated comparison, and the demonstration's turns through the agent loop (the answer turn's comparison;
the "notes" style's year noted in the search turn after each passage)."""

from __future__ import annotations

import itertools

import pytest

from data.config import RetrieverConfig
from data.types import Question
from data.worked_comparisons import comparison_thought
from rl.app.expert import expert_trajectories, write_expert_dataset
from rl.app.expert_thoughts import EXPERT_THINK_STYLES, answer_thought, round_thoughts
from rl.config import ConfigError, load_config
from rollouts.config import RolloutConfig, ToolsConfig
from rewards import parse_trajectory
from rollouts.protocols import build_protocol


def comparison(text: str, form: str, names: list[str], years: list[int], answers: list[str]) -> Question:
    return Question(id="q", question=text, answers=answers, structure="parallel",
                    sub_questions=[f"When was {name} born?" for name in names],
                    metadata={"template": f"person_birth_year_{form}", "entities": names,
                              "sub_answers": [str(year) for year in years]})


def generated_comparisons(world) -> list[Question]:
    """Every earliest / latest comparison of the world's splits (counts left out)."""
    return [question for split in world.splits.values() for question in split
            if question.structure == "parallel" and not question.metadata["template"].endswith("count")]


def winner_year(question: Question) -> str:
    return question.metadata["sub_answers"][question.metadata["entities"].index(question.answers[0])]


def test_two_entities_earliest_writes_both_years_and_the_earlier_one():
    question = comparison("Who was born first, Ann Lee or Bo Kay?", "earliest", ["Ann Lee", "Bo Kay"],
                          [1990, 1987], ["Bo Kay"])
    assert answer_thought(question, "compare") == "Ann Lee 1990 , Bo Kay 1987 first Bo Kay 1987"


def test_four_entities_latest_keeps_the_best_so_far_after_every_entity():
    question = comparison("Which of Ann Lee, Bo Kay, Cy Do and Di Ro was born most recently?", "latest",
                          ["Ann Lee", "Bo Kay", "Cy Do", "Di Ro"], [1950, 1990, 1970, 1991], ["Di Ro"])
    assert comparison_thought(question) == (
        "Ann Lee 1950 , Bo Kay 1990 last Bo Kay 1990 , Cy Do 1970 last Bo Kay 1990 , Di Ro 1991 last Di Ro 1991")


@pytest.mark.parametrize("direction,count", [("before", 2), ("after", 1)])
def test_count_writes_each_side_of_the_threshold_then_the_count(direction, count):
    question = comparison(f"How many of Ann Lee, Bo Kay and Cy Do were born {direction} 1980?", "count",
                          ["Ann Lee", "Bo Kay", "Cy Do"], [1975, 1990, 1961], [str(count)])
    assert comparison_thought(question) == f"Ann Lee 1975 before , Bo Kay 1990 after , Cy Do 1961 before ; {count}"


def test_no_thought_for_single_and_chain_questions_none_style_or_missing_metadata():
    single = Question(id="s", question="When was Ann Lee born?", answers=["1987"], structure="single",
                      sub_questions=["When was Ann Lee born?"], metadata={"entities": ["Ann Lee"],
                                                                          "sub_answers": ["1987"]})
    assert answer_thought(single, "compare") == ""
    bare = Question(id="b", question="Who was born first, A or B?", answers=["A"], structure="parallel",
                    sub_questions=["When was A born?", "When was B born?"])
    assert answer_thought(bare, "compare") == ""
    question = comparison("Who was born first, A or B?", "earliest", ["A", "B"], [1, 2], ["A"])
    assert answer_thought(question, "none") == ""
    with pytest.raises(ValueError, match="sft.expert_think"):
        answer_thought(question, "verbose")


def test_every_generated_comparison_thought_ends_on_the_gold_answer(tiny_world):
    parallel = [question for split in tiny_world.splits.values() for question in split
                if question.structure == "parallel"]
    forms = set()
    for question in parallel:
        thought = answer_thought(question, "compare")
        form = question.metadata["template"].rsplit("_", 1)[-1]
        forms.add(form)
        for name, year in zip(question.metadata["entities"], question.metadata["sub_answers"]):
            assert f"{name} {year}" in thought, (question.question, thought)
        if form == "count":
            assert thought.rsplit("; ", 1)[1] == question.answers[0], (question.question, thought)
        else:
            assert thought.endswith(f"{question.answers[0]} {winner_year(question)}"), (question.question, thought)
    assert forms == {"earliest", "latest", "count"}


def test_notes_note_each_fetched_year_in_the_next_round_only_when_rounds_fetch_one_entity_each():
    question = comparison("Who was born first, Ann Lee, Bo Kay or Cy Do?", "earliest", ["Ann Lee", "Bo Kay", "Cy Do"],
                          [1987, 1990, 1975], ["Cy Do"])
    one_each = [[query] for query in question.sub_questions]
    assert round_thoughts(question, "notes", one_each) == ["", "Ann Lee 1987", "Bo Kay 1990"]
    assert round_thoughts(question, "notes", [question.sub_questions]) == [""]  # fanned out: passages come together
    assert round_thoughts(question, "compare", one_each) == ["", "", ""]
    assert answer_thought(question, "notes") == answer_thought(question, "compare")
    bare = Question(id="b", question="Who was born first, A or B?", answers=["A"], structure="parallel",
                    sub_questions=["When was A born?", "When was B born?"])
    assert round_thoughts(bare, "notes", [["When was A born?"], ["When was B born?"]]) == ["", ""]  # no metadata
    with pytest.raises(ValueError, match="sft.expert_think"):
        round_thoughts(question, "verbose", one_each)


def test_config_accepts_exactly_the_expert_think_styles():
    for style in EXPERT_THINK_STYLES:
        assert load_config(None, [f"sft.expert_think={style}"]).sft.expert_think == style
    with pytest.raises(ConfigError, match="sft.expert_think"):
        load_config(None, ["sft.expert_think=verbose"])


@pytest.fixture(scope="module")
def setup(tiny_world, tiny_checkpoint):
    from data.retriever import build_retriever
    from rollouts.model_loading import load_tokenizer
    from rollouts.tools import build_tools

    executor = build_tools(ToolsConfig(), RetrieverConfig(), build_retriever(RetrieverConfig(),
                                                                             documents=tiny_world.documents))
    return load_tokenizer(tiny_checkpoint), executor, build_protocol("tags")


def test_compare_demonstration_thinks_in_the_answer_turn_only_and_answers_the_gold(tiny_world, setup):
    tokenizer, executor, tags = setup
    question = next(q for q in tiny_world.splits["train"] if q.structure == "parallel" and len(q.sub_questions) == 3)
    chain = next(q for q in tiny_world.splits["train"] if q.structure == "sequential")
    plain, chain_plain = expert_trajectories([question, chain], ["parallel", "sequential"], tags, tokenizer,
                                             executor, RolloutConfig(), think="none")
    thinking, chain_thinking = expert_trajectories([question, chain], ["parallel", "sequential"], tags, tokenizer,
                                                   executor, RolloutConfig(), think="compare")
    assert [turn.text for turn in thinking.turns[:-1]] == [turn.text for turn in plain.turns[:-1]]
    assert "<think>" not in plain.turns[-1].text
    answer_turn = thinking.turns[-1].text
    assert answer_turn.startswith(f"<think> {answer_thought(question, 'compare')} </think>")
    assert f"</think>\n<answer> {question.answers[0]} </answer>" in answer_turn
    assert thinking.final_answer == plain.final_answer == question.answers[0]
    assert parse_trajectory(thinking).valid  # the format reward takes the thought as part of the grammar
    assert chain_thinking.response_ids == chain_plain.response_ids  # chains carry no thought


def test_notes_demonstration_notes_each_year_read_in_the_next_search_turn(tiny_world, setup):
    tokenizer, executor, tags = setup
    question = next(q for q in tiny_world.splits["train"] if q.structure == "parallel" and len(q.sub_questions) == 3
                    and comparison_thought(q))

    def play(mode: str, think: str):
        (trajectory,) = expert_trajectories([question], [mode], tags, tokenizer, executor, RolloutConfig(), think=think)
        return trajectory

    compare, notes = play("sequential", "compare"), play("sequential", "notes")
    names, years = question.metadata["entities"], question.metadata["sub_answers"]
    assert len(notes.turns) == 4 and notes.turns[0].text == compare.turns[0].text  # nothing read yet: no note
    for turn, name, year, calls in zip(notes.turns[1:3], names, years, notes.turns[:2]):
        assert turn.text.startswith(f"<think> {name} {year} </think>\n<search>")
        assert year in calls.calls[0].observation  # the noted year is in the passage just read
    assert notes.turns[-1].text == compare.turns[-1].text  # the same comparison before the answer
    assert notes.final_answer == question.answers[0] and parse_trajectory(notes).valid
    fanned_notes, fanned_compare = play("parallel", "notes"), play("parallel", "compare")
    assert fanned_notes.response_ids == fanned_compare.response_ids  # one round: nothing to note between passages


def test_dataset_refuses_an_unknown_think_style(tiny_world, setup):
    tokenizer, executor, tags = setup
    with pytest.raises(ValueError, match="sft.expert_think"):
        write_expert_dataset(tiny_world.splits["train"][:2], tags, tokenizer, executor, think="verbose")


def test_side_by_side_puts_each_compared_pair_together_and_writes_the_winners_year_first():
    question = comparison("Which of Ann Lee, Bo Kay and Cy Do was born most recently?", "latest",
                          ["Ann Lee", "Bo Kay", "Cy Do"], [1950, 1990, 1970], ["Bo Kay"])
    assert answer_thought(question, "side_by_side") == (
        "Ann Lee 1950 , Bo Kay 1990 vs Ann Lee 1950 last 1990 Bo Kay , Cy Do 1970 vs Bo Kay 1990 last 1990 Bo Kay")
    earliest = comparison("Who was born first, Ann Lee or Bo Kay?", "earliest", ["Ann Lee", "Bo Kay"],
                          [1990, 1987], ["Bo Kay"])
    assert answer_thought(earliest, "side_by_side") == "Ann Lee 1990 , Bo Kay 1987 vs Ann Lee 1990 first 1987 Bo Kay"
    count = comparison("How many of Ann Lee and Bo Kay were born before 1980?", "count", ["Ann Lee", "Bo Kay"],
                       [1975, 1990], ["1"])
    assert answer_thought(count, "side_by_side") == answer_thought(count, "compare")  # counts keep their form
    with pytest.raises(ValueError, match="unknown worked-comparison form 'sideways'"):
        comparison_thought(question, "sideways")


def test_every_generated_side_by_side_thought_ends_on_the_gold_answer(tiny_world):
    for question in generated_comparisons(tiny_world):
        thought = answer_thought(question, "side_by_side")
        assert thought.endswith(f"{winner_year(question)} {question.answers[0]}"), (question.question, thought)
        for name, year in zip(question.metadata["entities"], question.metadata["sub_answers"]):
            assert f"{name} {year}" in thought, (question.question, thought)


def test_echo_writes_each_name_again_after_its_year_so_the_winners_name_follows_its_year_as_before():
    question = comparison("Which of Ann Lee, Bo Kay and Cy Do was born most recently?", "latest",
                          ["Ann Lee", "Bo Kay", "Cy Do"], [1950, 1990, 1970], ["Bo Kay"])
    thought = answer_thought(question, "echo")
    assert thought == (
        "Ann Lee 1950 Ann Lee , Bo Kay 1990 Bo Kay vs Ann Lee 1950 Ann Lee last 1990 Bo Kay , "
        "Cy Do 1970 Cy Do vs Bo Kay 1990 Bo Kay last 1990 Bo Kay")
    # Every winner's year was written before, each time followed by the winner's name.
    words = thought.split()
    for index, word in enumerate(words):
        if word in ("first", "last"):
            year, name = words[index + 1], " ".join(words[index + 2:index + 4])
            earlier = [i for i, w in enumerate(words[:index]) if w == year]
            assert earlier and all(" ".join(words[i + 1:i + 3]) == name for i in earlier)
    count = comparison("How many of Ann Lee and Bo Kay were born before 1980?", "count",
                       ["Ann Lee", "Bo Kay"], [1975, 1990], ["1"])
    assert answer_thought(count, "echo") == answer_thought(count, "compare")


def test_verdict_puts_each_steps_years_together_and_a_one_token_verdict_before_the_winner():
    question = comparison("Which of Ann Lee, Bo Kay and Cy Do was born most recently?", "latest",
                          ["Ann Lee", "Bo Kay", "Cy Do"], [1950, 1990, 1970], ["Bo Kay"])
    assert answer_thought(question, "verdict") == (
        "Ann Lee 1950 , Bo Kay 1990 vs Ann Lee 1950 : 1990 1950 last that Bo Kay 1990 , "
        "Cy Do 1970 vs Bo Kay 1990 : 1970 1990 last old Bo Kay 1990")
    earliest = comparison("Who was born first, Ann Lee or Bo Kay?", "earliest", ["Ann Lee", "Bo Kay"],
                          [1987, 1990], ["Ann Lee"])
    assert answer_thought(earliest, "verdict") == (
        "Ann Lee 1987 , Bo Kay 1990 vs Ann Lee 1987 : 1990 1987 first old Ann Lee 1987")
    count = comparison("How many of Ann Lee and Bo Kay were born before 1980?", "count", ["Ann Lee", "Bo Kay"],
                       [1975, 1990], ["1"])
    assert answer_thought(count, "verdict") == answer_thought(count, "compare")  # counts keep their form


def test_every_generated_verdict_points_at_the_step_winner_and_ends_on_the_gold_answer(tiny_world):
    verdicts = set()
    for question in generated_comparisons(tiny_world):
        thought = answer_thought(question, "verdict")
        assert thought.endswith(f"{question.answers[0]} {winner_year(question)}"), (question.question, thought)
        for step in thought.split(" , ")[1:]:
            entries, decision = step.split(" : ")
            new_year, old_year, word, verdict, *winner = decision.split()
            earliest = word == "first"
            new_wins = (int(new_year) < int(old_year)) == earliest
            assert verdict == ("that" if new_wins else "old"), (question.question, step)
            new_entry, old_entry = entries.split(" vs ")
            assert " ".join(winner) == (new_entry if new_wins else old_entry), (question.question, step)
            verdicts.add(verdict)
    assert verdicts == {"that", "old"}


def test_digits_spells_each_steps_years_and_compares_them_digit_by_digit_before_the_verdict():
    question = comparison("Which of Ann Lee, Bo Kay and Cy Do was born most recently?", "latest",
                          ["Ann Lee", "Bo Kay", "Cy Do"], [1950, 1990, 1970], ["Bo Kay"])
    assert answer_thought(question, "digits") == (
        "Ann Lee 1950 , Bo Kay 1990 vs Ann Lee 1950 last : 1 9 9 0 , 1 9 5 0 ; = = > that Bo Kay 1990 , "
        "Cy Do 1970 vs Bo Kay 1990 last : 1 9 7 0 , 1 9 9 0 ; = = < old Bo Kay 1990")
    earliest = comparison("Who was born first, Ann Lee or Bo Kay?", "earliest", ["Ann Lee", "Bo Kay"],
                          [987, 1990], ["Ann Lee"])  # years of other lengths are compared at one width
    assert answer_thought(earliest, "digits") == (
        "Ann Lee 987 , Bo Kay 1990 vs Ann Lee 987 first : 1 9 9 0 , 0 9 8 7 ; > old Ann Lee 987")
    count = comparison("How many of Ann Lee and Bo Kay were born before 1980?", "count", ["Ann Lee", "Bo Kay"],
                       [1975, 1990], ["1"])
    assert answer_thought(count, "digits") == answer_thought(count, "compare")  # counts keep their form


def test_every_generated_digit_comparison_agrees_with_the_years_and_ends_on_the_gold_answer(tiny_world):
    from rl.app.thought_audit import digit_step_checks

    last_signs = set()
    for question in generated_comparisons(tiny_world):
        thought = answer_thought(question, "digits")
        assert thought.endswith(f"{question.answers[0]} {winner_year(question)}"), (question.question, thought)
        # the step audit (rl/app/thought_audit.py) finds every step of the expert's thought right
        audited = digit_step_checks(thought)
        assert len(audited) == thought.count(" vs ") and all(all(step.values()) for step in audited), thought
        for step in thought.split(" vs ")[1:]:
            # "<best so far> <word> : <new digits> , <old digits> ; <signs> <verdict> <winner>[ , <next entry>]"
            head, rest = step.split(" : ")
            digits, decision = rest.split(" ; ")
            new_digits, old_digits = (part.split() for part in digits.split(" , "))
            word, tokens = head.split()[-1], decision.split()
            signs = list(itertools.takewhile(lambda token: token in ("=", "<", ">"), tokens))
            verdict = tokens[len(signs)]
            new_year, old_year = int("".join(new_digits)), int("".join(old_digits))
            assert signs[:-1] == ["="] * (len(signs) - 1) and signs[-1] == ("<" if new_year < old_year else ">")
            new_wins = (new_year < old_year) == (word == "first")
            assert verdict == ("that" if new_wins else "old"), (question.question, step)
            last_signs.add((signs[-1], verdict))
    assert last_signs == {("<", "that"), ("<", "old"), (">", "that"), (">", "old")}


@pytest.mark.parametrize("form", ["side_by_side", "verdict", "digits", "echo"])
def test_the_other_forms_refuse_the_reward_that_scores_the_compare_form(form):
    refusal = f"reward.weights.*worked_comparison scores the 'compare' form.*'{form}'"
    with pytest.raises(ConfigError, match=refusal):
        load_config(None, [f"sft.expert_think={form}",
                           "reward.weights={exact_match: 1.0, worked_comparison: 0.5}"])


@pytest.mark.parametrize("form", ["side_by_side", "verdict", "digits", "echo"])
def test_a_drills_pieces_join_into_the_thought_and_its_decisions_are_the_step_winners(form):
    from data.worked_comparisons import comparison_drill

    names, years = ["Ann Lee", "Bo Kay", "Cy Do"], [1950, 1990, 1970]
    question = comparison("Which of Ann Lee, Bo Kay and Cy Do was born most recently?", "latest", names, years,
                          ["Bo Kay"])
    pieces = comparison_drill(names, years, earliest=False, form=form)
    assert "".join(text for text, _ in pieces) == answer_thought(question, form)
    decisions = [text for text, is_decision in pieces if is_decision]
    assert decisions == {"side_by_side": [" 1990 Bo Kay", " 1990 Bo Kay"],
                         "echo": [" 1990 Bo Kay", " 1990 Bo Kay"],
                         "verdict": [" that Bo Kay 1990", " old Bo Kay 1990"],
                         "digits": [" = = > that Bo Kay 1990", " = = < old Bo Kay 1990"]}[form]
    with pytest.raises(ValueError, match="not 'compare'"):
        comparison_drill(names, years, earliest=False, form="compare")


def test_drill_rows_carry_the_loss_on_the_decisions_only_about_training_names_with_new_years(tiny_world, setup):
    from rl.app.expert import comparison_drill_dataset

    tokenizer, _, _ = setup
    train = tiny_world.splits["train"]
    drills = comparison_drill_dataset(train, tokenizer, 40, "side_by_side", seed=3)
    assert len(drills) == 40 and set(drills["mode"]) == {"drill"}
    comparisons = [q for q in train if q.metadata.get("template", "").endswith(("earliest", "latest"))]
    known_names = {name for q in comparisons for name in q.metadata["entities"]}
    known_years = {int(value) for q in comparisons for value in q.metadata["sub_answers"]}
    gold_pairs = {(name, int(year)) for q in comparisons for name, year in zip(q.metadata["entities"],
                                                                                 q.metadata["sub_answers"])}
    drawn_pairs = 0
    for row in drills:
        text = tokenizer.decode(row["input_ids"])
        assert text.startswith("<think> ")
        thought = text[len("<think> "):]
        entries = [step.split(" vs ")[0] for step in thought.split(" , ")]
        names = [entry.rsplit(" ", 1)[0] for entry in entries]
        years = [int(entry.rsplit(" ", 1)[1]) for entry in entries]
        assert set(names) <= known_names and set(years) <= known_years and len(set(years)) == len(years)
        drawn_pairs += sum((name, year) not in gold_pairs for name, year in zip(names, years))
        # the loss tokens are each step's winner, year then name, and nothing else
        lossy = tokenizer.decode([t for t, m in zip(row["input_ids"], row["completion_mask"]) if m])
        earliest = " first " in thought
        winners, best = [], 0
        for index in range(1, len(years)):
            if (years[index] < years[best]) if earliest else (years[index] > years[best]):
                best = index
            winners.append(f" {years[best]} {names[best]}")
        assert lossy == "".join(winners), (thought, lossy)
    assert drawn_pairs > 0  # the years are drawn anew, not the training questions' own


def test_drill_loss_thought_puts_the_loss_on_everything_after_the_first_entry(tiny_world, setup):
    from rl.app.expert import comparison_drill_dataset

    tokenizer, _, _ = setup
    train = tiny_world.splits["train"]
    decisions = comparison_drill_dataset(train, tokenizer, 20, "digits", seed=3)
    thought = comparison_drill_dataset(train, tokenizer, 20, "digits", seed=3, loss="thought")
    assert decisions["input_ids"] == thought["input_ids"]  # the same drills, the loss elsewhere
    for row_d, row_t in zip(decisions, thought):
        text = tokenizer.decode(row_t["input_ids"])
        first_entry = text.split(" , ")[0]  # "<think> Ann Lee 1987"
        ids, mask = row_t["input_ids"], row_t["completion_mask"]
        lossless = tokenizer.decode([t for t, m in zip(ids, mask) if not m])
        assert lossless.strip() == first_entry.strip()
        # the spelt years carry the loss now, and did not before
        spelt = text.split(" : ")[1].split(" ;")[0]  # "1 9 9 0 , 1 9 8 7"
        lossy_d = tokenizer.decode([t for t, m in zip(row_d["input_ids"], row_d["completion_mask"]) if m])
        lossy_t = tokenizer.decode([t for t, m in zip(row_t["input_ids"], row_t["completion_mask"]) if m])
        assert spelt not in lossy_d and spelt in lossy_t
    with pytest.raises(ValueError, match="sft.drill_loss"):
        comparison_drill_dataset(train, tokenizer, 2, "digits", loss="all")
    with pytest.raises(ConfigError, match="sft.drill_loss"):
        load_config(None, ["sft.drill_loss=all"])


def test_comparison_drills_need_a_drill_form_and_a_count_of_at_least_zero():
    with pytest.raises(ConfigError, match="sft.comparison_drills.*side_by_side, verdict, digits or echo"):
        load_config(None, ["sft.expert_think=compare", "sft.comparison_drills=10"])
    with pytest.raises(ConfigError, match="sft.comparison_drills.*>= 0"):
        load_config(None, ["sft.expert_think=side_by_side", "sft.comparison_drills=-1"])
    assert load_config(None, ["sft.expert_think=verdict", "sft.comparison_drills=10"]).sft.comparison_drills == 10
