"""Answer correctness: SQuAD/HotpotQA normalisation, exact match, token F1, substring match.

The metrics are the standard open-domain QA ones (SQuAD v1.1 evaluation script, HotpotQA's F1 with its
yes/no/noanswer rule, Search-R1's EM): lower-case, drop punctuation, drop the articles a/an/the,
collapse whitespace, then compare against every gold answer and keep the best score.

    exact_match("The Eiffel Tower!", ["eiffel tower"])    # 1.0
    f1_score("Paris, France", ["Paris"])                  # 0.666…

The registered rewards (`exact_match`, `f1`, `substring_exact_match`) score the answer the model wrote
in its last `<answer>` block (rewards/parsing.py), never the prompt; no answer scores 0.
"""

from __future__ import annotations

import re
import string
from collections import Counter

from rewards.parsing import parse_trajectory
from rewards.registry import register_reward

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_YES_NO_NOANSWER = ("yes", "no", "noanswer")


def normalize_answer(text: str) -> str:
    """Lower-case, remove punctuation, remove articles, collapse whitespace (SQuAD order of operations)."""
    text = "".join(character for character in str(text).lower() if character not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _golds_list(golds: list[str] | str) -> list[str]:
    return [golds] if isinstance(golds, str) else [str(gold) for gold in golds]


def exact_match(prediction: str, golds: list[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer, else 0.0."""
    normalized_prediction = normalize_answer(prediction)
    return float(any(normalize_answer(gold) == normalized_prediction for gold in _golds_list(golds)))


def substring_exact_match(prediction: str, golds: list[str]) -> float:
    """1.0 if any normalised gold answer occurs inside the normalised prediction (empty golds never match)."""
    normalized_prediction = normalize_answer(prediction)
    normalized_golds = [normalize_answer(gold) for gold in _golds_list(golds)]
    return float(any(gold and gold in normalized_prediction for gold in normalized_golds))


def _token_f1(normalized_prediction: str, normalized_gold: str) -> float:
    # HotpotQA: a yes/no/noanswer answer is either exactly right or worth nothing.
    if normalized_prediction != normalized_gold and (
        normalized_prediction in _YES_NO_NOANSWER or normalized_gold in _YES_NO_NOANSWER
    ):
        return 0.0
    prediction_tokens, gold_tokens = normalized_prediction.split(), normalized_gold.split()
    common = Counter(prediction_tokens) & Counter(gold_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision, recall = num_same / len(prediction_tokens), num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, golds: list[str]) -> float:
    """Token-level F1 between the normalised prediction and the best-matching gold answer."""
    normalized_prediction = normalize_answer(prediction)
    return max(
        (_token_f1(normalized_prediction, normalize_answer(gold)) for gold in _golds_list(golds)), default=0.0
    )


def answer_is_correct(answer: str | None, golds: list[str]) -> bool:
    """Exact match of a parsed answer; no answer is never correct."""
    return answer is not None and exact_match(answer, golds) == 1.0


@register_reward("exact_match")
def exact_match_reward(trajectory, config) -> float:
    answer = parse_trajectory(trajectory).answer
    return 0.0 if answer is None else exact_match(answer, trajectory.question.answers)


@register_reward("f1")
def f1_reward(trajectory, config) -> float:
    answer = parse_trajectory(trajectory).answer
    return 0.0 if answer is None else f1_score(answer, trajectory.question.answers)


@register_reward("substring_exact_match")
def substring_exact_match_reward(trajectory, config) -> float:
    answer = parse_trajectory(trajectory).answer
    return 0.0 if answer is None else substring_exact_match(answer, trajectory.question.answers)
