"""The step audit of `digits` thoughts: each kind of mistake fails its own check and no other. (That every
step the expert writes passes all four checks is tested with the thoughts, test_expert_thoughts.py.)"""

from __future__ import annotations

import json

import pytest

from rl.app.thought_audit import CHECKS, audit_episodes, digit_step_checks, main, side_by_side_step_checks

STEP = "Bo Kay 1990 , Ann Lee 1987 vs Bo Kay 1990 first : 1 9 8 7 , 1 9 9 0 ; = = < that Ann Lee 1987"


@pytest.mark.parametrize("thought, failed", [
    (STEP, None),
    (STEP.replace(": 1 9 8 7", ": 1 9 8 8"), "spelt"),            # a digit that is not the year's
    (STEP.replace("= = < that Ann Lee 1987", "= = > old Bo Kay 1990"), "signs"),  # 8 against 9 as greater
    (STEP.replace("< that Ann Lee 1987", "< old Bo Kay 1990"), "verdict"),  # the sign says: the new one
    (STEP.replace("that Ann Lee 1987", "that Bo Kay 1987"), "winner"),  # the verdict's entry, another name
    (STEP.replace("that Ann Lee 1987", "that Ann Lee 1990"), "winner"),  # ... or another year
])
def test_a_mistake_fails_its_own_check_only(thought, failed):
    (step,) = digit_step_checks(thought)
    assert {check for check in CHECKS if not step[check]} == ({failed} if failed else set())


def test_a_four_digit_step_keeps_the_spelling_when_the_signs_are_wrong():
    (step,) = digit_step_checks(STEP.replace("; = = <", "; = <"))  # stops at the second digit, which is equal
    assert step == {"spelt": True, "signs": False, "verdict": True, "winner": True}


def test_audit_counts_the_last_turns_of_parallel_episodes(tmp_path, capsys):
    def episode(structure: str, thought: str) -> dict:
        answer_turn = f"<think> {thought} </think>\n<answer> a </answer>"
        return {"structure": structure, "turns": [{"text": "<search> q </search>"}, {"text": answer_turn}]}

    path = tmp_path / "episodes.jsonl"
    wrong_verdict = STEP.replace("< that Ann Lee 1987", "< old Bo Kay 1990")
    episodes = [episode("parallel", STEP), episode("parallel", wrong_verdict),
                episode("sequential", STEP.replace(": 1 9 8 7", ": 0 0 0 0"))]
    path.write_text("\n".join(json.dumps(row) for row in episodes) + "\n")
    assert main(["--episodes", str(path)]) == {"form": "digits", "steps": 2, "spelt": 1.0, "signs": 1.0,
                                               "verdict": 0.5,
                                               "winner": 1.0, "whole": 0.5}
    assert json.loads(capsys.readouterr().out)["steps"] == 2
    path.write_text(json.dumps(episode("parallel", "Bo Kay 1990 , Ann Lee 1987 first Ann Lee 1987")) + "\n")
    with pytest.raises(ValueError, match="no comparison steps"):
        audit_episodes(path)
    with pytest.raises(SystemExit, match="thought_audit: .*no comparison steps"):
        main(["--episodes", str(path)])
    path.write_text(json.dumps(episode("parallel", STEP)) + "\n{not json\n")
    with pytest.raises(ValueError, match="line 2: not a JSON episode"):
        audit_episodes(path)


SIDE = ("Bo Kay 1990 , Ann Lee 1987 vs Bo Kay 1990 first 1987 Ann Lee , "
        "Cy Do 1975 vs Ann Lee 1987 first 1975 Cy Do")


@pytest.mark.parametrize("thought, failed", [
    (SIDE, [set(), set()]),
    (SIDE.replace("first 1987 Ann Lee", "first 1990 Bo Kay"), [{"year"}, set()]),  # the later year, its name
    (SIDE.replace("first 1987 Ann Lee", "first 1987 Bo Kay"), [{"name"}, set()]),  # the year, the other name
    (SIDE.replace("first 1975 Cy Do", "first 1975 Ann Lee"), [set(), {"name"}]),
    (SIDE.replace("first 1975 Cy Do", "first 1966 Cy Do"), [set(), {"year", "name"}]),  # a year nobody has
    (SIDE.replace("Bo Kay 1990 ,", "Bo Kay 1990 Bo Kay ,")
     .replace("Ann Lee 1987 vs", "Ann Lee 1987 Ann Lee vs")
     .replace("vs Bo Kay 1990", "vs Bo Kay 1990 Bo Kay"), [set(), set()]),  # echo entries
])
def test_a_side_by_side_step_fails_the_decision_it_gets_wrong(thought, failed):
    steps = side_by_side_step_checks(thought)
    assert [{check for check, right in step.items() if not right} for step in steps] == failed


def test_side_by_side_audit_skips_count_thoughts_and_steps_between_equal_years(tmp_path):
    def episode(thought: str) -> dict:
        answer_turn = f"<think> {thought} </think>\n<answer> a </answer>"
        return {"structure": "parallel", "turns": [{"text": answer_turn}]}

    path = tmp_path / "episodes.jsonl"
    rows = [episode(SIDE), episode("Ann Lee 1987 after , Bo Kay 1975 before ; 1"),
            episode("Bo Kay 1990 , Ann Lee 1990 vs Bo Kay 1990 first 1990 Bo Kay"),
            episode(SIDE.replace("first 1987 Ann Lee", "first 1987 Bo Kay"))]
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    assert audit_episodes(path) == {"form": "side_by_side", "steps": 4, "year": 1.0, "name": 0.75,
                                    "whole": 0.75}
