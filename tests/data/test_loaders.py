"""Benchmark loaders on small fixture files (JSONL and Parquet), corpus loading, and their error messages."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset

from data.corpus import format_passages, load_corpus, split_title, truncate_text
from data.errors import DataError
from data.loaders import load_question_file, load_questions, register_dataset


def write_jsonl(path, rows):
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def row(question_id, question, answers, question_type=None):
    result = {"id": question_id, "question": question, "golden_answers": answers}
    if question_type is not None:
        result["metadata"] = {"type": question_type, "level": "hard"}
    return result


def test_hotpotqa_comparison_is_parallel_and_bridge_is_sequential(tmp_path):
    path = write_jsonl(tmp_path / "hotpotqa_dev.jsonl", [
        row("a", "Which is older, X or Y?", ["X"], "comparison"),
        row("b", "Who directed the film starring Z?", ["W"], "bridge"),
    ])
    questions = load_questions(path, "hotpotqa")
    assert [(q.id, q.structure, q.answers, q.source) for q in questions] == [
        ("a", "parallel", ["X"], "hotpotqa"), ("b", "sequential", ["W"], "hotpotqa")]
    assert questions[0].metadata == {"type": "comparison", "level": "hard"}


def test_2wiki_types_musique_and_single_hop_datasets(tmp_path):
    path = write_jsonl(tmp_path / "2wiki.jsonl", [
        row(1, "q1", ["a"], "comparison"), row(2, "q2", ["a"], "bridge_comparison"),
        row(3, "q3", ["a"], "inference"), row(4, "q4", ["a"], "compositional"),
    ])
    assert [q.structure for q in load_questions(path, "2wikimultihopqa")] == [
        "parallel", "parallel", "sequential", "sequential"]
    assert [q.id for q in load_questions(path, "2wikimultihopqa")] == ["1", "2", "3", "4"]
    assert [q.structure for q in load_questions(path, "musique")] == ["sequential"] * 4
    for name in ("nq", "triviaqa", "popqa", "bamboogle", "NQ"):
        assert {q.structure for q in load_questions(path, name)} == {"single"}


def test_parquet_file_through_datasets(tmp_path):
    path = tmp_path / "hotpotqa.parquet"
    Dataset.from_list([
        row("p1", "Which came first, A or B?", ["A", "a"], "comparison"),
        row("p2", "Where was the author of C born?", ["D"], "bridge"),
    ]).to_parquet(str(path))
    questions = load_questions(path, "hotpotqa")
    assert [(q.id, q.structure, q.answers) for q in questions] == [
        ("p1", "parallel", ["A", "a"]), ("p2", "sequential", ["D"])]


def test_search_r1_parquet_layout_with_answers_in_reward_model(tmp_path):
    path = tmp_path / "nq_train.parquet"
    search_r1_row = {"id": "train_0", "question": "who wrote x?", "data_source": "nq",
                     "reward_model": {"style": "rule", "ground_truth": {"target": ["Y", "Mr Y"]}}}
    Dataset.from_list([search_r1_row]).to_parquet(str(path))
    (question,) = load_questions(path, "nq")
    assert (question.question, question.answers, question.structure) == (
        "who wrote x?", ["Y", "Mr Y"], "single")


@pytest.mark.parametrize("bad_row, reason", [
    ({"id": "x", "golden_answers": ["a"]}, "'question' must be a non-empty string"),
    ({"id": "x", "question": "   ", "golden_answers": ["a"]}, "'question' must be a non-empty string"),
    ({"id": "x", "question": ["q"], "golden_answers": ["a"]}, "'question' must be a non-empty string"),
    ({"id": "x", "question": "q"}, "'golden_answers' must be a non-empty list"),
    ({"id": "x", "question": "q", "golden_answers": []}, "'golden_answers' must be a non-empty list"),
    ({"id": "x", "question": "q", "golden_answers": 7}, "'golden_answers' must be a non-empty list"),
    ({"id": "x", "question": "q", "golden_answers": [{"a": 1}]}, "'golden_answers' must hold strings"),
    ({"id": "x", "question": "q", "golden_answers": ["", " "]}, "only empty strings"),
    ({"id": "x", "question": "q", "golden_answers": ["a"], "metadata": "comparison"},
     "'metadata' must be an object"),
])
def test_malformed_row_raises_with_file_and_line(tmp_path, bad_row, reason):
    path = write_jsonl(tmp_path / "hotpotqa.jsonl", [row("ok", "fine?", ["yes"], "bridge"), bad_row])
    with pytest.raises(DataError, match=reason) as raised:
        load_questions(path, "hotpotqa")
    assert str(raised.value).startswith(f"{path}:2: ")


def test_skip_mode_counts_malformed_rows_and_keeps_line_numbers(tmp_path):
    path = write_jsonl(tmp_path / "nq.jsonl", [
        row("1", "first?", ["a"]), "", {"id": "2", "golden_answers": ["b"]}, row("3", "third?", ["c"]),
        {"id": "4", "question": "fourth?", "golden_answers": []},
    ])
    loaded = load_question_file(path, "nq", on_malformed="skip")
    assert [q.id for q in loaded.questions] == ["1", "3"]
    assert loaded.num_skipped == 2
    assert loaded.skipped[0].startswith(f"{path}:3: ") and loaded.skipped[1].startswith(f"{path}:5: ")


def test_broken_json_line_is_named_even_in_skip_mode(tmp_path):
    path = write_jsonl(tmp_path / "nq.jsonl", [row("1", "first?", ["a"]), '{"id": "2", "question": '])
    with pytest.raises(DataError, match=r"nq\.jsonl:2: not valid JSON"):
        load_questions(path, "nq", on_malformed="skip")


def test_missing_file_unknown_dataset_and_bad_options(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_questions(tmp_path / "absent.jsonl", "nq")
    path = write_jsonl(tmp_path / "x.jsonl", [row("1", "q?", ["a"])])
    with pytest.raises(DataError, match="unknown dataset 'squad'.*hotpotqa"):
        load_questions(path, "squad")
    with pytest.raises(DataError, match="on_malformed"):
        load_questions(path, "nq", on_malformed="ignore")
    with pytest.raises(DataError, match="unsupported file type"):
        load_questions(tmp_path / "x.csv", "nq")


def test_missing_id_gets_a_stable_generated_id(tmp_path):
    path = write_jsonl(tmp_path / "bamboogle.jsonl", [{"question": "q?", "golden_answers": ["a"]}])
    assert load_questions(path, "bamboogle")[0].id == "bamboogle-1"


def test_registering_a_dataset_twice_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("hotpotqa")(lambda row: "single")


def test_load_corpus_and_its_errors(tmp_path):
    path = write_jsonl(tmp_path / "corpus.jsonl", [
        {"id": 0, "contents": '"Aaron"\nAaron is a prophet.'},
        {"id": "d1", "contents": "Quenbridge\nA city."}])
    assert load_corpus(path) == [{"id": "0", "contents": '"Aaron"\nAaron is a prophet.'},
                                 {"id": "d1", "contents": "Quenbridge\nA city."}]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"id": "a", "contents": "t\nx"},
                                               {"id": "b", "text": "no contents"}])
    with pytest.raises(DataError, match=r"bad\.jsonl:2: corpus row needs a string 'contents'"):
        load_corpus(bad)
    no_id = write_jsonl(tmp_path / "no_id.jsonl", [{"contents": "t\nx"}])
    with pytest.raises(DataError, match=r"no_id\.jsonl:1: corpus row needs an 'id'"):
        load_corpus(no_id)
    with pytest.raises(DataError, match="empty"):
        load_corpus(write_jsonl(tmp_path / "empty.jsonl", []))
    with pytest.raises(DataError, match="does not exist"):
        load_corpus(tmp_path / "absent.jsonl")


def test_passage_formatting_follows_search_r1():
    assert split_title('"Aaron"\nAaron is a prophet.') == ("Aaron", "Aaron is a prophet.")
    assert truncate_text("one two three four", 9) == "one two..."
    assert truncate_text("short", 300) == "short"
    documents = [{"id": "1", "contents": "Quenbridge\nQuenbridge was founded in 1432."},
                 {"id": "2", "contents": "Varlo Tenmis\nVarlo Tenmis was born in 1850 in Quenbridge."}]
    assert format_passages(documents, max_passage_chars=24) == (
        "Doc 1(Title: Quenbridge) Quenbridge was founded...\n"
        "Doc 2(Title: Varlo Tenmis) Varlo Tenmis was born...")


def test_the_generic_loader_reads_any_jsonl_through_its_columns(tmp_path):
    path = write_jsonl(tmp_path / "my_qa.jsonl", [
        {"qid": 7, "query": "Which is older, Varlo or Quen?", "gold": ["Varlo"], "kind": "comparison",
         "hops": ["When was Varlo born?", "When was Quen born?"]},
        {"query": "Who directed the film that Bemo wrote?", "gold": "Ardo", "kind": "sequential",
         "hops": [{"question": "Which film did Bemo write?"}, {"question": "Who directed #1?"}]},
        {"qid": "c", "query": "When was Varlo born?", "gold": 1873},
        {"qid": "d", "query": "Who founded the company that made #1?", "gold": ["Tenmis"], "hops": ["a", "b", "c"]},
    ])
    columns = {"id": "qid", "question": "query", "answers": "gold", "structure": "kind", "sub_questions": "hops"}
    questions = load_questions(path, "my_qa", columns=columns)
    assert [(q.id, q.structure, q.answers, len(q.sub_questions), q.source) for q in questions] == [
        ("7", "parallel", ["Varlo"], 2, "my_qa"),  # a 2Wiki/HotpotQA type name maps to its structure
        ("my_qa-2", "sequential", ["Ardo"], 2, "my_qa"),  # no id: dataset and line; objects with "question"
        ("c", "single", ["1873"], 0, "my_qa"),  # no structure, no sub-questions: single; a bare answer
        ("d", "sequential", ["Tenmis"], 3, "my_qa"),  # no structure but a chain of sub-questions: sequential
    ]
    assert questions[1].sub_questions == ["Which film did Bemo write?", "Who directed #1?"]


def test_the_generic_loader_reads_parquet_and_nested_columns_with_default_names(tmp_path):
    path = tmp_path / "mine.parquet"
    Dataset.from_list([row("p1", "Which came first, A or B?", ["A"], "comparison"),
                       row("p2", "Where was the author of C born?", ["D"], "bridge")]).to_parquet(str(path))
    questions = load_questions(path, "anything", columns={"structure": "metadata.type"})
    assert [(q.id, q.question, q.answers, q.structure) for q in questions] == [
        ("p1", "Which came first, A or B?", ["A"], "parallel"), ("p2", "Where was the author of C born?", ["D"],
                                                                 "sequential")]


@pytest.mark.parametrize("bad_row, reason", [
    ({"query": "q", "gold": ["a"], "kind": "diagonal"}, r"'kind' is 'diagonal'; valid values: parallel, "),
    ({"query": "q", "gold": ["a"], "hops": "a then b"}, r"'hops' must be a list of strings, got str"),
    ({"query": "q", "gold": ["a"], "hops": ["a", ""]}, r"'hops' must hold non-empty strings"),
    ({"query": "", "gold": ["a"]}, r"'query' must be a non-empty string"),
    ({"query": "q"}, r"'gold' must be a non-empty list of strings, got None"),
])
def test_the_generic_loader_names_the_mapped_column_of_a_bad_row(tmp_path, bad_row, reason):
    path = write_jsonl(tmp_path / "mine.jsonl", [{"query": "fine", "gold": ["x"]}, bad_row])
    columns = {"question": "query", "answers": "gold", "structure": "kind", "sub_questions": "hops"}
    with pytest.raises(DataError, match=rf"mine\.jsonl:2: malformed row: {reason}"):
        load_questions(path, "mine", columns=columns)


def test_an_unknown_role_in_a_column_mapping_is_a_config_error(tmp_path):
    from data.errors import ConfigError

    path = write_jsonl(tmp_path / "mine.jsonl", [{"question": "q", "golden_answers": ["a"]}])
    with pytest.raises(ConfigError, match=r"key 'data.columns.mine': unknown role\(s\) \['answer'\]; the roles are"):
        load_questions(path, "mine", columns={"answer": "gold"})
