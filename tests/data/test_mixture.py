"""data/mixture.py: one training list from several environments, each making up its share."""

from __future__ import annotations

from collections import Counter

import pytest

from data.mixture import mix_questions, share_counts
from data.types import Question, question_environment


def questions(environment: str, count: int) -> list[Question]:
    metadata = {} if environment == "qa" else {"environment": environment}
    return [Question(id=f"{environment}-{index}", question=f"question {index}?", answers=["a"], metadata=dict(metadata))
            for index in range(count)]


def test_share_counts_hand_out_the_remainder_by_largest_fraction():
    assert share_counts(10, {"qa": 0.7, "apps": 0.3}) == {"qa": 7, "apps": 3}
    assert share_counts(7, {"qa": 0.5, "apps": 0.5}) == {"qa": 3, "apps": 4}  # a tie goes to the first name
    assert sum(share_counts(13, {"a": 0.2, "b": 0.3, "c": 0.5}).values()) == 13


@pytest.mark.parametrize("num_qa, num_apps, apps_fraction, expected_qa, expected_apps", [
    (40, 10, 0.5, 40, 40),     # the apps tasks repeat 4 times
    (40, 10, 0.1, 90, 10),     # QA repeats: 10 apps tasks are 10% of a list of 100
    (40, 10, 0.2, 40, 10),     # the worlds already hold the share: nothing repeats
    (3, 30, 0.3, 70, 30),
])
def test_each_environment_makes_up_its_share_and_every_question_occurs(num_qa, num_apps, apps_fraction,
                                                                       expected_qa, expected_apps):
    qa, apps = questions("qa", num_qa), questions("apps", num_apps)
    mixed = mix_questions({"qa": qa, "apps": apps}, {"qa": 1 - apps_fraction, "apps": apps_fraction}, seed=0)
    by_environment = Counter(question_environment(question) for question in mixed)
    assert by_environment == {"qa": expected_qa, "apps": expected_apps}
    assert {question.id for question in mixed} == {question.id for question in qa + apps}
    occurrences = Counter(question.id for question in mixed)
    # repeats come in whole passes: within an environment, counts differ by at most one
    for environment, group in (("qa", qa), ("apps", apps)):
        counts = {occurrences[question.id] for question in group}
        assert max(counts) - min(counts) <= 1, environment


def test_the_mixture_is_shuffled_and_seeded():
    sources = {"qa": questions("qa", 30), "apps": questions("apps", 30)}
    shares = {"qa": 0.5, "apps": 0.5}
    first = [question.id for question in mix_questions(sources, shares, seed=1)]
    assert first == [question.id for question in mix_questions(sources, shares, seed=1)]
    assert first != [question.id for question in mix_questions(sources, shares, seed=2)]
    first_half = Counter(identifier.split("-")[0] for identifier in first[:30])
    assert first_half["qa"] not in (0, 30)  # not one environment after the other


@pytest.mark.parametrize("shares, message", [
    ({"qa": 0.6, "apps": 0.6}, "sum to 1"),
    ({"qa": 1.0, "apps": 0.0}, r"\(0, 1\]"),
    ({"qa": 1.0}, "name the environments"),
])
def test_bad_shares_are_refused(shares, message):
    with pytest.raises(ValueError, match=message):
        mix_questions({"qa": questions("qa", 3), "apps": questions("apps", 3)}, shares)


def test_an_environment_without_questions_is_refused():
    with pytest.raises(ValueError, match="'apps' environment has no training questions"):
        mix_questions({"qa": questions("qa", 3), "apps": []}, {"qa": 0.5, "apps": 0.5})


def test_a_question_without_an_environment_is_qa():
    assert question_environment(Question(id="q", question="q?", answers=["a"])) == "qa"
    assert question_environment(Question(id="t", question="t?", answers=["a"], metadata={"environment": "apps"})) == "apps"
