"""The generated world: determinism, question structure, unambiguous answers, disjoint splits, recall."""

from __future__ import annotations

import json
import re

import pytest

import data.world as world_module
from data.errors import DataError
from data.retriever import BM25Retriever, partition_of
from data.world import ensure_world, generate_world, load_world, structure_counts, write_world
from data.config import WorldConfig

SMALL = dict(num_entities_per_kind=30, num_train=200, num_validation=30, num_test=30)
YEAR = re.compile(r"^\d{4}$")


@pytest.fixture(scope="module")
def small_world():
    return generate_world(WorldConfig(seed=0, **SMALL))


def all_questions(world):
    return [question for questions in world.splits.values() for question in questions]


def test_same_seed_gives_identical_world_and_different_seeds_differ():
    first, second = generate_world(WorldConfig(seed=3, **SMALL)), generate_world(WorldConfig(seed=3, **SMALL))
    other = generate_world(WorldConfig(seed=4, **SMALL))
    assert first.documents == second.documents
    assert [q.to_row() for q in all_questions(first)] == [q.to_row() for q in all_questions(second)]
    assert first.documents != other.documents
    assert [q.question for q in first.splits["test"]] != [q.question for q in other.splits["test"]]


def test_structure_counts_use_largest_remainder():
    # 5 * (0.5, 0.35, 0.15) = 2.5, 1.75, 0.75 -> floors 2, 1, 0; the two largest remainders get one more
    assert structure_counts(5, {"parallel": 0.5, "sequential": 0.35, "single": 0.15}) == {
        "parallel": 2, "sequential": 2, "single": 1}
    assert structure_counts(200, {"parallel": 0.5, "sequential": 0.35, "single": 0.15}) == {
        "parallel": 100, "sequential": 70, "single": 30}


def test_split_sizes_structure_mix_and_ids(small_world):
    assert {split: len(questions) for split, questions in small_world.splits.items()} == {
        "train": 200, "validation": 30, "test": 30}
    train_structures = [question.structure for question in small_world.splits["train"]]
    assert (train_structures.count("parallel"), train_structures.count("sequential"),
            train_structures.count("single")) == (100, 70, 30)
    for split, questions in small_world.splits.items():
        expected_ids = [f"world-{split}-{i:06d}" for i in range(len(questions))]
        assert [question.id for question in questions] == expected_ids


def test_splits_are_disjoint_by_question_text(small_world):
    texts = {split: {question.question for question in questions}
             for split, questions in small_world.splits.items()}
    assert sum(len(t) for t in texts.values()) == len(all_questions(small_world))
    assert not texts["train"] & texts["test"] and not texts["train"] & texts["validation"]
    assert not texts["validation"] & texts["test"]


def test_documents_are_short_titled_and_unique(small_world):
    assert len(small_world.documents) == 4 * 30
    titles = [document["contents"].split("\n")[0] for document in small_world.documents]
    assert len(set(titles)) == len(titles)
    assert len({document["id"] for document in small_world.documents}) == len(titles)
    for document in small_world.documents:
        title, text = document["contents"].split("\n", 1)
        assert title in text  # the name is repeated in the text
        assert len(document["contents"].split()) < 60
        assert 1 <= text.count(".") <= 4


def test_every_question_has_answers_and_subquestions_of_the_right_count(small_world):
    hop_counts = set()
    for question in all_questions(small_world):
        assert question.answers and all(answer.strip() for answer in question.answers)
        num_sub_questions = len(question.sub_questions)
        assert num_sub_questions == len(question.supporting_doc_ids) == len(question.metadata["sub_answers"])
        if question.structure == "parallel":
            assert 2 <= len(question.sub_questions) <= 4
            assert len(set(question.supporting_doc_ids)) == len(question.supporting_doc_ids)
        elif question.structure == "sequential":
            assert 2 <= len(question.sub_questions) <= 3
            assert question.metadata["hop_answers"][-1] == question.answers[0]
            hop_counts.add(len(question.sub_questions))
        else:
            assert len(question.sub_questions) == 1
    assert hop_counts == {2, 3}


def test_most_parallel_questions_compare_two_entities():
    world = generate_world(WorldConfig(seed=0, num_entities_per_kind=30, num_train=1000, num_validation=10,
                                       num_test=10))
    parallel = [q for q in world.splits["train"] if q.structure == "parallel"]
    two_entity_share = sum(len(q.sub_questions) == 2 for q in parallel) / len(parallel)
    assert 0.6 <= two_entity_share <= 0.8  # configured share 0.7, 500 samples


def test_sub_answers_are_stated_in_the_supporting_documents(small_world):
    contents = {document["id"]: document["contents"] for document in small_world.documents}
    for question in all_questions(small_world):
        for answer, doc_id in zip(question.metadata["sub_answers"], question.supporting_doc_ids):
            assert answer in contents[doc_id], (question.question, answer, doc_id)


def test_sequential_hops_fill_the_previous_answer_into_the_next_sub_question(small_world):
    for question in small_world.splits["train"]:
        if question.structure != "sequential":
            continue
        hop_answers = question.metadata["hop_answers"]
        for answer, next_sub_question in zip(hop_answers[:-1], question.sub_questions[1:]):
            assert answer in next_sub_question
        assert hop_answers[-1] not in question.question  # the bridge entity is not given away


def test_comparisons_have_no_ties_and_the_answer_is_the_extreme(small_world):
    for question in all_questions(small_world):
        if question.structure != "parallel":
            continue
        years = [int(year) for year in question.metadata["sub_answers"]]
        names = question.metadata["entities"]
        if question.answers[0].isdigit():  # "How many of ... before/after YEAR?"
            threshold = int(re.search(r"(before|after) (\d{4})\?$", question.question).group(2))
            assert threshold not in years
            assert 0 <= int(question.answers[0]) <= len(years)
            continue
        assert len(set(years)) == len(years)
        winner_year = years[names.index(question.answers[0])]
        assert winner_year in (min(years), max(years))


def test_answers_look_like_their_kind(small_world):
    for question in all_questions(small_world):
        template = question.metadata["template"]
        if template.endswith("_year"):  # single or sequential questions ending in a year fact
            assert YEAR.match(question.answers[0]), (template, question.answers)


def test_test_split_does_not_depend_on_the_number_of_training_questions():
    few = generate_world(WorldConfig(seed=1, **{**SMALL, "num_train": 50}))
    many = generate_world(WorldConfig(seed=1, **{**SMALL, "num_train": 250}))
    assert [q.to_row() for q in few.splits["test"]] == [q.to_row() for q in many.splits["test"]]


def test_training_entity_sets_redraw_names_and_facts_in_partitions_of_their_own():
    world = generate_world(WorldConfig(seed=4, train_worlds=3, **SMALL))
    per_set = 4 * SMALL["num_entities_per_kind"]
    assert len(world.entities) == 4 * per_set
    assert len({document["id"] for document in world.documents}) == len(world.documents)
    sets = [world.entities[index * per_set:(index + 1) * per_set] for index in range(4)]
    assert [{partition_of(entity.doc_id) for entity in entity_set} for entity_set in sets] == [
        {""}, {"w1"}, {"w2"}, {"w3"}]
    for entity_set in sets:
        assert len({entity.name for entity in entity_set}) == per_set  # unique inside a set
    # every set draws names and facts anew: names recur across sets with other facts
    bigger = generate_world(WorldConfig(seed=4, train_worlds=3, num_entities_per_kind=100, num_train=100,
                                        num_validation=10, num_test=10))
    founded: dict[str, list[int]] = {}
    for entity in bigger.entities:
        if entity.kind == "city":
            founded.setdefault(entity.name, []).append(entity.facts["founding_year"])
    recurring = [years for years in founded.values() if len(years) > 1]
    assert len(recurring) >= 5, len(recurring)
    assert sum(len(set(years)) == len(years) for years in recurring) >= 0.9 * len(recurring)
    people = [{entity.name for entity in entity_set if entity.kind == "person"} for entity_set in sets]
    assert len(people[1] & people[2]) <= 2  # full names mostly differ between sets


def test_every_question_searches_its_own_sets_partition_and_test_questions_only_the_base_set():
    world = generate_world(WorldConfig(seed=4, train_worlds=3, **SMALL))
    for split in ("test", "validation"):
        for question in world.splits[split]:
            assert question.metadata["corpus_partition"] == ""
            assert {partition_of(doc_id) for doc_id in question.supporting_doc_ids} == {""}
    partitions = [question.metadata["corpus_partition"] for question in world.splits["train"]]
    assert all({partition_of(doc_id) for doc_id in question.supporting_doc_ids} == {partition}
               for question, partition in zip(world.splits["train"], partitions))
    counts = {name: partitions.count(name) for name in ("w1", "w2", "w3")}
    assert max(counts.values()) - min(counts.values()) <= 3, counts  # spread evenly
    # inside its partition, BM25 finds every supporting document of a training question first
    retriever = BM25Retriever(world.documents)
    for question in world.splits["train"][:60]:
        hits = [retriever.search([sub], topk=1, partition=question.metadata["corpus_partition"])[0][0].id
                for sub in question.sub_questions]
        assert hits == question.supporting_doc_ids, question.question
    one_set = generate_world(WorldConfig(seed=4, **SMALL))
    assert all("corpus_partition" not in question.metadata for question in one_set.splits["train"])


def test_training_entity_sets_leave_the_base_world_and_its_test_split_unchanged():
    alone = generate_world(WorldConfig(seed=5, **SMALL))
    with_sets = generate_world(WorldConfig(seed=5, train_worlds=2, **SMALL))
    assert with_sets.documents[: len(alone.documents)] == alone.documents
    for split in ("test", "validation"):  # the same questions; with sets they name their (base) partition
        rows = [q.to_row() for q in with_sets.splits[split]]
        for row in rows:
            assert row["metadata"].pop("corpus_partition") == ""
        assert rows == [q.to_row() for q in alone.splits[split]]


def test_shared_names_give_every_set_and_every_seed_the_same_names_with_facts_drawn_anew():
    world = generate_world(WorldConfig(seed=4, train_worlds=2, names="shared", **SMALL))
    fresh = generate_world(WorldConfig(seed=9, names="shared", **SMALL))
    per_set = 4 * SMALL["num_entities_per_kind"]
    sets = [world.entities[index * per_set:(index + 1) * per_set] for index in range(3)] + [fresh.entities]
    assert len({tuple((entity.kind, entity.name) for entity in entity_set) for entity_set in sets}) == 1
    born = [[entity.facts["birth_year"] for entity in entity_set if entity.kind == "person"] for entity_set in sets]
    for other in born[1:]:  # the same person, another birth year, in nearly every set
        assert sum(first != year for first, year in zip(born[0], other)) >= 0.9 * len(other)
    # one name, one query, three sets: each partition's search finds its own set's passage, with its own year
    retriever = BM25Retriever(world.documents)
    person = sets[0][0]
    assert person.kind == "person"
    passages = [retriever.search([f"When was {person.name} born?"], topk=1, partition=partition)[0][0]
                for partition in ("", "w1", "w2")]
    assert [passage.id for passage in passages] == [person.doc_id, f"w1/{person.doc_id}", f"w2/{person.doc_id}"]
    assert [str(born[index][0]) in passage.contents for index, passage in enumerate(passages)] == [True] * 3


def test_an_unknown_names_mode_is_refused_by_name():
    with pytest.raises(DataError, match="data.world.names is 'global'"):
        generate_world(WorldConfig(seed=0, names="global", **SMALL))


def test_negative_training_entity_sets_are_refused():
    with pytest.raises(DataError, match="train_worlds"):
        generate_world(WorldConfig(train_worlds=-1, **SMALL))


def test_too_small_world_raises_a_clear_error():
    with pytest.raises(DataError, match="num_entities_per_kind"):
        generate_world(WorldConfig(num_entities_per_kind=5, num_train=2000, num_validation=10, num_test=10))


def test_bm25_finds_the_supporting_document_of_every_gold_sub_question(small_world):
    retriever = BM25Retriever(small_world.documents)
    questions = all_questions(small_world)
    sub_questions = [sub for question in questions for sub in question.sub_questions]
    hits = iter(retriever.search(sub_questions, topk=3))
    fully_retrieved = 0
    for question in questions:
        found = [doc_id in {hit.id for hit in next(hits)} for doc_id in question.supporting_doc_ids]
        fully_retrieved += all(found)
    recall = fully_retrieved / len(questions)
    print(f"BM25 top-3 recall of all supporting documents per question: {recall:.4f} "
          f"({len(questions)} questions)")
    assert recall >= 0.95


def test_write_world_files_follow_the_contract_and_load_back(tmp_path):
    config = WorldConfig(seed=2, **SMALL)
    out = write_world(tmp_path / "world", config)
    assert sorted(path.name for path in out.iterdir()) == [
        "corpus.jsonl", "test.jsonl", "train.jsonl", "validation.jsonl", "world_config.json"]
    first_row = json.loads((out / "train.jsonl").read_text().splitlines()[0])
    assert {"id", "question", "golden_answers", "structure", "sub_questions"} <= set(first_row)
    assert isinstance(first_row["golden_answers"], list)
    corpus_row = json.loads((out / "corpus.jsonl").read_text().splitlines()[0])
    assert set(corpus_row) == {"id", "contents"}
    loaded, generated = load_world(out), generate_world(config)
    assert loaded.documents == generated.documents
    assert {s: [q.to_row() for q in qs] for s, qs in loaded.splits.items()} == {
        s: [q.to_row() for q in qs] for s, qs in generated.splits.items()}


def test_ensure_world_writes_once_then_reuses_and_rebuilds_on_config_change(tmp_path, monkeypatch):
    config = WorldConfig(seed=5, **SMALL)
    first = ensure_world(tmp_path, config)

    def refuse(_config):
        raise AssertionError("generate_world must not run for a cached world")

    monkeypatch.setattr(world_module, "generate_world", refuse)
    cached = ensure_world(tmp_path, config)
    assert cached.documents == first.documents
    assert [q.question for q in cached.splits["test"]] == [q.question for q in first.splits["test"]]
    monkeypatch.undo()
    rebuilt = ensure_world(tmp_path, WorldConfig(seed=6, **SMALL))
    assert rebuilt.documents != first.documents
    assert load_world(tmp_path).documents == rebuilt.documents
    (tmp_path / "test.jsonl").unlink()  # an incomplete cache is rebuilt, not trusted
    repaired = ensure_world(tmp_path, WorldConfig(seed=6, **SMALL))
    reloaded = load_world(tmp_path).splits["test"]
    assert [q.to_row() for q in reloaded] == [q.to_row() for q in repaired.splits["test"]]


def test_load_world_names_missing_files(tmp_path):
    with pytest.raises(DataError, match="build-world"):
        load_world(tmp_path)


def test_fact_sheets_state_every_fact_after_its_label_and_keep_the_questions():
    """passage_style=facts rewrites the passages only: the same questions, each sub-answer right after the
    label its relation uses, and BM25 still finds every supporting passage."""
    prose = generate_world(WorldConfig(seed=0, **SMALL))
    facts = generate_world(WorldConfig(seed=0, passage_style="facts", **SMALL))
    assert [q.to_row() for q in all_questions(facts)] == [q.to_row() for q in all_questions(prose)]
    assert [d["id"] for d in facts.documents] == [d["id"] for d in prose.documents]
    by_id = {document["id"]: document["contents"] for document in facts.documents}
    city = next(entity for entity in facts.entities if entity.kind == "city")
    assert by_id[city.doc_id] == f"{city.name}\nfounded {city.facts['founding_year']} ; region {city.facts['region']}"
    for question in all_questions(facts):
        for answer, doc_id in zip(question.metadata["sub_answers"], question.supporting_doc_ids):
            assert re.search(rf"(born|born in|released|directed by|founded|founded by|region|headquartered in|"
                             rf"filmed in|produced by|occupation) {re.escape(answer)}( ;|$)", by_id[doc_id]), answer
    retriever = BM25Retriever(facts.documents)
    sub_questions = [sub for question in all_questions(facts) for sub in question.sub_questions]
    gold = [doc_id for question in all_questions(facts) for doc_id in question.supporting_doc_ids]
    top_hits = retriever.search(sub_questions, topk=1)
    assert sum(hits[0].id == doc_id for hits, doc_id in zip(top_hits, gold)) / len(gold) >= 0.95


def test_an_unknown_passage_style_is_refused_by_name():
    with pytest.raises(DataError, match="data.world.passage_style is 'bullets'"):
        generate_world(WorldConfig(seed=0, passage_style="bullets", **SMALL))
