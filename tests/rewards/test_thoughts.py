"""The worked_comparison reward: step-by-step credit against the question's worked comparison, on hand-written
episodes, through the weighted total, and None where a question has no comparison."""

from __future__ import annotations

import pytest
from trajectory_builders import build_trajectory

from data.types import Question
from data.worked_comparisons import comparison_steps
from rewards import score_trajectory
from rewards.config import RewardConfig
from rewards.thoughts import answer_turn_thought, worked_comparison_reward, worked_comparison_score

WORKED = "Ann Lee 1987 , Bo Kay 1990 first Ann Lee 1987 , Cy Do 1975 first Cy Do 1975"


def comparison_episode(answer_turn: str, names=("Ann Lee", "Bo Kay", "Cy Do"), years=(1987, 1990, 1975)):
    trajectory = build_trajectory(["<search> When was Ann Lee born? ## When was Bo Kay born? </search>", answer_turn],
                                  answers=["Cy Do"], structure="parallel")
    trajectory.question = Question(
        id="q", question="Who was born first, Ann Lee, Bo Kay or Cy Do?", answers=["Cy Do"], structure="parallel",
        sub_questions=[f"When was {name} born?" for name in names],
        metadata={"template": "person_birth_year_earliest", "entities": list(names),
                  "sub_answers": [str(year) for year in years]})
    return trajectory


def test_steps_split_at_commas_and_semicolons_with_whitespace_collapsed():
    assert comparison_steps(" A  1987 after , B 1975 before ; 1 ") == ["A 1987 after", "B 1975 before", "1"]
    assert comparison_steps("") == []


@pytest.mark.parametrize("thought,score", [
    (WORKED, 1.0),
    ("Ann Lee 1987 , Bo Kay 1987 first Ann Lee 1987 , Cy Do 1975 first Cy Do 1975", 2 / 3),  # a miscopied year
    ("Ann Lee 1987 , Bo Kay 1990 first Bo Kay 1990 , Cy Do 1975 first Cy Do 1975", 2 / 3),  # a wrong comparison
    ("Ann Lee 1987", 1 / 3),  # stopped after the first step
    ("Bo Kay 1990 , Ann Lee 1987", 0.0),  # steps out of place score nothing
    ("", 0.0),
    (None, 0.0),
])
def test_score_is_the_share_of_steps_written_at_their_place(thought, score):
    assert worked_comparison_score(thought, WORKED) == pytest.approx(score)


def test_the_reward_reads_the_answer_turn_s_thought():
    right = comparison_episode(f"<think> {WORKED} </think> <answer> Cy Do </answer>")
    assert answer_turn_thought(right) == WORKED
    assert worked_comparison_reward(right, RewardConfig()) == 1.0
    miscopied = comparison_episode("<think> Ann Lee 1987 , Bo Kay 1990 first Ann Lee 1987 , Cy Do 1995 first "
                                   "Ann Lee 1987 </think> <answer> Ann Lee </answer>")
    assert worked_comparison_reward(miscopied, RewardConfig()) == pytest.approx(2 / 3)
    guessed = comparison_episode("<answer> Cy Do </answer>")  # right by guessing, without the work
    assert worked_comparison_reward(guessed, RewardConfig()) == 0.0
    unanswered = comparison_episode(f"<think> {WORKED} </think> <search> When was Cy Do born? </search>")
    assert worked_comparison_reward(unanswered, RewardConfig()) == 0.0


def test_questions_without_a_worked_comparison_leave_it_out_of_the_total():
    single = build_trajectory(["<search> Eiffel Tower </search>", "<think> Paris </think> <answer> Paris </answer>"])
    assert worked_comparison_reward(single, RewardConfig()) is None
    config = RewardConfig(weights={"exact_match": 1.0, "worked_comparison": 0.5})
    single_scores = score_trajectory(single, config)
    assert single_scores.total == pytest.approx(1.0)
    guessed = score_trajectory(comparison_episode("<think> Ann Lee 1987 </think> <answer> Cy Do </answer>"), config)
    assert guessed.total == pytest.approx(1.0 + 0.5 / 3)
