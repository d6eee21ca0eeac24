"""The generated world: invented entities, one short document each, and questions with gold decompositions.

It exists so the whole system trains and is tested on a CPU with no download, and so the structure of
every question is known: "parallel" (comparisons and counts over 2-4 entities whose lookups are
independent and can be issued in one round), "sequential" (2-3 hop bridges where an answer feeds the
next query) and "single" (one lookup). Names are nonce words built from syllables ("Varlo Tenmis",
"Quenbridge"), so no model knows a fact without searching for it; years are random.

Entities: people (birth year, birth city, occupation), films (release year, director, filming city,
producing company), companies (founding year, founder, headquarters city) and cities (founding year,
region). Relations are functional (a film has one director), so every bridge chain has one answer.

Names are combinations of words from one fixed lexicon (`name_lexicon`, the same for every seed), so a
tokenizer can hold every word a name can contain and a new world brings new combinations and facts, not
new words.

With `train_worlds: K`, the world holds K+1 entity sets drawn independently: the base set, which validation
and test ask about, and K training sets, which only training questions ask about. Every set draws its names and its facts
anew, so names recur across sets with other facts (the city Quenbridge founded in 1843 in one set, in 1402
in another) and most full names occur in one set only: a policy cannot answer from facts it learnt by heart,
nor spell names it learnt by heart; it has to copy from the question and read what it retrieves. All documents share one corpus
file; each set is a partition of it (doc ids `w<i>/...`, the base set's without prefix), and every question
names its partition in `metadata["corpus_partition"]`, so its searches stay inside its own set.
With `names: shared`, every set, of every seed, holds the same names instead, each with its own facts: a
question's text then recurs across sets with other answers, and the names a policy meets at test time are
familiar while their facts are not (nothing learnt by heart helps there either).

Everything is seeded (one `random.Random` per stream, never the global RNG): the same WorldConfig gives
byte-identical files. Questions are generated test split first, then validation, then train, each
from its own stream, so changing `num_train` leaves the test split unchanged. A question is identified
by what it asks (relation chain and entities, not its wording), and no two questions in the world share
that key, so the splits are disjoint by question text and by underlying lookup (with `names: shared`, by
underlying lookup only: a training set's question can read like a test question and have another answer).

What it simplifies on purpose: facts are years, names and regions; documents are 1-3 template
sentences; comparisons never involve ties (tied samples are drawn again).

    fanout data build-world --out world/ --seed 0          # or: write_world("world/", WorldConfig())
    world = ensure_world("world/", WorldConfig())           # writes once, then reuses the cached copy
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import Stemmer

from data.config import WorldConfig
from data.corpus import iter_jsonl, load_corpus, write_corpus, write_jsonl
from data.errors import DataError
from data.registry import Registry
from data.types import PARTITION_KEY, Question
from data.world_templates import (
    CHAINS_BY_HOPS,
    COMPARISONS,
    DOCUMENT_RENDERERS,
    FACTS,
    PASSAGE_STYLES,
    ComparisonSpec,
    FactSpec,
    render_fact_sheet,
)

WORLD_FORMAT_VERSION = 2  # bump when generation changes, so cached worlds are rebuilt
SPLITS = ("train", "validation", "test")
GENERATION_ORDER = ("test", "validation", "train")
ENTITY_KINDS = ("city", "person", "company", "film")  # creation order: later kinds point to earlier ones
TWO_ENTITY_SHARE = 0.7  # parallel questions over two entities; the rest over three or four
COUNT_SHARE = 0.3  # among 3-4 entity parallel questions, "how many ... before YEAR?" instead of a superlative
THREE_HOP_SHARE = 0.3  # sequential questions with three hops; the rest have two
NUMBER_WORDS = ("zero", "one", "two", "three", "four")

ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "h", "j", "w",
          "br", "dr", "tr", "th", "sh", "qu", "kr", "st")
VOWELS = ("a", "e", "i", "o", "u", "a", "e", "i", "o", "ai", "ea", "ou")
CODAS = ("", "", "", "", "n", "r", "l", "m", "s")
FINAL_CODAS = ("n", "r", "l", "m", "s", "x", "th", "nd", "rk", "ck", "sh", "", "")
FILM_NOUNS = ("Road", "Harbor", "Nights", "Rising", "Summer", "Echo", "Crossing", "Garden", "Winter", "Tide",
              "Letters", "Signal", "Station", "Orchard")
COMPANY_SUFFIXES = ("Works", "Industries", "Group", "Labs", "Foundry", "Holdings", "Motors", "Systems",
                    "Textiles", "Press")
CITY_SUFFIXES = ("bridge", "mouth", "holm", "ford", "haven", "burg", "vik", "stead", "moor", "dale", "port",
                 "wick", "field", "ton")
REGION_SUFFIXES = ("ia", "and", "ora", "esh", "ant")
OCCUPATIONS = ("painter", "engineer", "novelist", "architect", "botanist", "composer", "physician",
               "sculptor", "chemist", "cartographer", "poet", "historian", "astronomer", "economist")


@dataclass
class Entity:
    kind: str  # "person", "film", "company" or "city"
    name: str  # unique in the world; the title line of its document
    doc_id: str  # id of its document in the corpus
    facts: dict[str, int | str] = field(default_factory=dict)  # years, region, or names of related entities


@dataclass
class World:
    documents: list[dict]  # corpus rows {"id", "contents"}
    splits: dict[str, list[Question]]  # "train", "validation", "test"
    entities: list[Entity] = field(default_factory=list)  # empty when loaded from disk


# ----------------------------------------------------------------------------------------------
# Entities
# ----------------------------------------------------------------------------------------------


class NonceNames:
    """Capitalised invented words, unique in the world even after stemming (so BM25 keeps them apart)."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.stemmer = Stemmer.Stemmer("english")
        self.used_stems: set[str] = set()

    def _syllables(self, count: int) -> str:
        parts = []
        for index in range(count):
            coda = self.rng.choice(FINAL_CODAS if index == count - 1 else CODAS)
            parts.append(self.rng.choice(ONSETS) + self.rng.choice(VOWELS) + coda)
        return "".join(parts)

    def word(self, syllables: tuple[int, ...] = (2, 3), suffix_choices: tuple[str, ...] = ("",)) -> str:
        for _ in range(1000):
            stem_part = self._syllables(self.rng.choice(syllables))
            word = (stem_part + self.rng.choice(suffix_choices)).capitalize()
            stem = self.stemmer.stemWord(word.lower())
            if 4 <= len(word) <= 12 and stem not in self.used_stems:
                self.used_stems.add(stem)
                return word
        raise RuntimeError("could not invent a new unique word after 1000 tries")


def _born_between(people: list[Entity], earliest: int, latest: int, rng: random.Random) -> Entity:
    """A person born in [earliest, latest] if there is one (plausible founders/directors), else anyone."""
    candidates = [person for person in people if earliest <= person.facts["birth_year"] <= latest]
    return rng.choice(candidates or people)


@dataclass(frozen=True)
class NameLexicon:
    """The words every world's names are made of: the same for every seed, so a tokenizer can hold each as one
    token and a policy trained on one world meets no new word in another, only new combinations and facts.

    A person is a given name and a surname; a film, a title word and a film noun ("Kelvar Harbor"); a company,
    a title word and a suffix; a city and a region, one word each. Words never share a stem, so BM25 tells
    any two names apart by at least one word.
    """

    given_names: tuple[str, ...]
    surnames: tuple[str, ...]
    title_words: tuple[str, ...]  # first words of film and company names
    cities: tuple[str, ...]
    regions: tuple[str, ...]

    def words(self) -> list[str]:
        """Every word a name can contain, suffixes and film nouns included."""
        return [*self.given_names, *self.surnames, *self.title_words, *self.cities, *self.regions,
                *FILM_NOUNS, *COMPANY_SUFFIXES]


LEXICON_SIZES = {"given_names": 400, "surnames": 400, "title_words": 800, "cities": 1500, "regions": 100}


def name_lexicon() -> NameLexicon:
    """The fixed lexicon (its own seed, whatever the world's)."""
    names = NonceNames(random.Random("fanout-world:lexicon"))
    shapes = {"given_names": ((2,), ("",)), "surnames": ((2, 2, 3), ("",)), "title_words": ((2, 2, 3), ("",)),
              "cities": ((1, 2), CITY_SUFFIXES), "regions": ((2,), REGION_SUFFIXES)}
    return NameLexicon(**{field_name: tuple(names.word(*shapes[field_name]) for _ in range(size))
                          for field_name, size in LEXICON_SIZES.items()})


class NameDrawer:
    """Draws names from the lexicon, never the same name twice in one entity set."""

    def __init__(self, lexicon: NameLexicon, rng: random.Random):
        self.lexicon = lexicon
        self.rng = rng  # its own stream: sets drawn with equal name streams get the same names, other facts
        self.used: set[str] = set()

    def draw(self, make: Callable[[], str], what: str, capacity: int) -> str:
        for _ in range(1000):
            name = make()
            if name not in self.used:
                self.used.add(name)
                return name
        raise DataError(f"the name lexicon has no unused {what} left ({capacity} possible names); lower "
                        "data.world.num_entities_per_kind")


def generate_entities(num_per_kind: int, rng: random.Random, names: NameDrawer, id_prefix: str = "") -> list[Entity]:
    """People, films, companies and cities whose relations point inside this set, named by `names` (no name
    twice in a set). `id_prefix` puts the set's documents in a corpus partition of their own."""
    lexicon = names.lexicon
    num_regions = max(3, min(12, num_per_kind // 8))
    regions = names.rng.sample(lexicon.regions, num_regions)
    by_kind: dict[str, list[Entity]] = {kind: [] for kind in ENTITY_KINDS}

    def add(kind: str, name: str, facts: dict) -> None:
        by_kind[kind].append(Entity(kind, name, f"{id_prefix}{kind}-{len(by_kind[kind]):04d}", facts))

    def city_name() -> str:
        return names.draw(lambda: names.rng.choice(lexicon.cities), "city names", len(lexicon.cities))

    def person_name() -> str:
        return names.draw(lambda: f"{names.rng.choice(lexicon.given_names)} {names.rng.choice(lexicon.surnames)}",
                          "person names", len(lexicon.given_names) * len(lexicon.surnames))

    def titled_name(endings: tuple[str, ...], what: str) -> str:
        return names.draw(lambda: f"{names.rng.choice(lexicon.title_words)} {names.rng.choice(endings)}", what,
                          len(lexicon.title_words) * len(endings))

    for _ in range(num_per_kind):
        add("city", city_name(), {"founding_year": rng.randint(1100, 1900), "region": rng.choice(regions)})
    for _ in range(num_per_kind):
        add("person", person_name(),
            {"birth_year": rng.randint(1800, 1995), "birth_city": rng.choice(by_kind["city"]).name,
             "occupation": rng.choice(OCCUPATIONS)})
    for _ in range(num_per_kind):
        year = rng.randint(1820, 2015)
        name = titled_name(COMPANY_SUFFIXES, "company names")
        founder = _born_between(by_kind["person"], year - 70, year - 20, rng)
        add("company", name, {"founding_year": year, "founder": founder.name,
                              "headquarters": rng.choice(by_kind["city"]).name})
    for _ in range(num_per_kind):
        year = rng.randint(1900, 2020)
        older = [company for company in by_kind["company"] if company.facts["founding_year"] <= year]
        name = titled_name(FILM_NOUNS, "film names")
        director = _born_between(by_kind["person"], year - 80, year - 20, rng)
        add("film", name, {"release_year": year, "director": director.name,
                           "filming_city": rng.choice(by_kind["city"]).name,
                           "studio": rng.choice(older or by_kind["company"]).name})
    return [entity for kind in ("person", "film", "company", "city") for entity in by_kind[kind]]


def render_documents(entities: list[Entity], rng: random.Random, passage_style: str = "prose") -> list[dict]:
    """One document per entity: title line (the name), then 1-3 sentences in randomly chosen templates
    (`prose`) or its labelled facts in a fixed order (`facts`)."""
    if passage_style not in PASSAGE_STYLES:
        raise DataError(f"data.world.passage_style is {passage_style!r}; valid: {', '.join(PASSAGE_STYLES)}")
    documents = []
    for entity in entities:
        if passage_style == "facts":
            text = render_fact_sheet(entity)
        else:
            text = DOCUMENT_RENDERERS[entity.kind](entity, rng)
        documents.append({"id": entity.doc_id, "contents": f"{entity.name}\n{text}"})
    return documents


# ----------------------------------------------------------------------------------------------
# Questions
# ----------------------------------------------------------------------------------------------


class EntityIndex:
    def __init__(self, entities: list[Entity]):
        self.by_name = {entity.name: entity for entity in entities}
        self.by_kind: dict[str, list[Entity]] = {}
        for entity in entities:
            self.by_kind.setdefault(entity.kind, []).append(entity)


# A draft is (uniqueness key, question with an empty id); None means "tie or degenerate sample, draw again".
Draft = tuple[tuple, Question]
QuestionSampler = Callable[[EntityIndex, random.Random], "Draft | None"]
QUESTION_SAMPLERS: Registry[QuestionSampler] = Registry("question sampler")  # keyed by question structure


def register_question_sampler(structure: str) -> Callable[[QuestionSampler], QuestionSampler]:
    return QUESTION_SAMPLERS.register(structure)


def _count_answers(count: int) -> list[str]:
    return [str(count), NUMBER_WORDS[count]] if count < len(NUMBER_WORDS) else [str(count)]


def _join_names(names: list[str]) -> str:
    return ", ".join(names[:-1]) + " and " + names[-1]


def _comparison_question(spec: ComparisonSpec, entities: list[Entity], rng: random.Random) -> Draft | None:
    years = [entity.facts[spec.fact] for entity in entities]
    names = [entity.name for entity in entities]
    many = len(entities) > 2
    if many and rng.random() < COUNT_SHARE:
        threshold = rng.randrange(min(years) // 10 * 10, max(years) // 10 * 10 + 11, 10)
        if threshold in years:
            return None
        direction = rng.choice(("before", "after"))
        count = sum((year < threshold) if direction == "before" else (year > threshold) for year in years)
        template = rng.choice(spec.count_templates)
        text = template.format(items=_join_names(names), year=threshold, direction=direction)
        form, answers = f"count_{direction}_{threshold}", _count_answers(count)
    else:
        if len(set(years)) < len(years):
            return None
        form = rng.choice(("earliest", "latest"))
        pick = min if form == "earliest" else max
        winner = names[years.index(pick(years))]
        templates = (spec.earliest_many if many else spec.earliest_two) if form == "earliest" else (
            spec.latest_many if many else spec.latest_two)
        text = rng.choice(templates).format(a=names[0], b=names[-1], items=_join_names(names))
        answers = [winner]
    fact = FACTS[(spec.kind, spec.fact)]
    question = Question(
        id="", question=text, answers=answers, structure="parallel",
        sub_questions=[fact.query.format(x=name) for name in names],
        supporting_doc_ids=[entity.doc_id for entity in entities],
        metadata={"template": f"{spec.kind}_{spec.fact}_{form.split('_')[0]}", "entities": names,
                  "sub_answers": [str(year) for year in years]},
    )
    return ("parallel", spec.kind, spec.fact, form, tuple(sorted(names))), question


@register_question_sampler("parallel")
def sample_parallel(index: EntityIndex, rng: random.Random) -> Draft | None:
    spec = rng.choice(COMPARISONS)
    num_entities = 2 if rng.random() < TWO_ENTITY_SHARE else rng.choice((3, 4))
    pool = index.by_kind[spec.kind]
    if len(pool) < num_entities:
        return None
    return _comparison_question(spec, rng.sample(pool, num_entities), rng)


@register_question_sampler("sequential")
def sample_sequential(index: EntityIndex, rng: random.Random) -> Draft | None:
    hops = 3 if rng.random() < THREE_HOP_SHARE else 2
    chain: tuple[FactSpec, ...] = rng.choice(CHAINS_BY_HOPS[hops])
    start = rng.choice(index.by_kind[chain[0].kind])
    subject, phrase = start, start.name
    sub_questions, hop_answers, doc_ids = [], [], []
    for position, fact in enumerate(chain):
        sub_questions.append(fact.query.format(x=subject.name))
        doc_ids.append(subject.doc_id)
        value = subject.facts[fact.name]
        hop_answers.append(str(value))
        if position < len(chain) - 1:
            phrase = fact.noun_phrase.format(x=phrase)
            subject = index.by_name[str(value)]
    text = rng.choice(chain[-1].questions).format(x=phrase)
    fact_names = tuple(f"{fact.kind}.{fact.name}" for fact in chain)
    question = Question(
        id="", question=text, answers=[hop_answers[-1]], structure="sequential", sub_questions=sub_questions,
        supporting_doc_ids=doc_ids,
        metadata={"template": "->".join(fact_names), "entities": [start.name], "hops": len(chain),
                  "hop_answers": hop_answers, "sub_answers": hop_answers},
    )
    return ("sequential", fact_names, start.name), question


@register_question_sampler("single")
def sample_single(index: EntityIndex, rng: random.Random) -> Draft | None:
    fact = rng.choice(list(FACTS.values()))
    entity = rng.choice(index.by_kind[fact.kind])
    answer = str(entity.facts[fact.name])
    question = Question(
        id="", question=rng.choice(fact.questions).format(x=entity.name), answers=[answer],
        structure="single", sub_questions=[fact.query.format(x=entity.name)],
        supporting_doc_ids=[entity.doc_id],
        metadata={"template": f"{fact.kind}.{fact.name}", "entities": [entity.name], "sub_answers": [answer]},
    )
    return ("single", fact.kind, fact.name, entity.name), question


def structure_counts(total: int, mix: dict[str, float]) -> dict[str, int]:
    """Split `total` by the shares in `mix` (largest remainder, so the counts sum to `total`)."""
    exact = {structure: total * share for structure, share in mix.items()}
    counts = {structure: int(value) for structure, value in exact.items()}
    by_remainder = sorted(exact, key=lambda structure: (counts[structure] - exact[structure], structure))
    for structure in by_remainder[: total - sum(counts.values())]:
        counts[structure] += 1
    return counts


def _sample_unique(
    structure: str, count: int, index: EntityIndex, rng: random.Random, used_keys: set
) -> list[Question]:
    sampler, questions = QUESTION_SAMPLERS[structure], []
    for _ in range(50 * count + 1000):
        if len(questions) == count:
            break
        draft = sampler(index, rng)
        if draft is not None and draft[0] not in used_keys:
            used_keys.add(draft[0])
            questions.append(draft[1])
    if len(questions) < count:
        raise DataError(f"the world is too small for {count} distinct {structure} questions per split (made "
                        f"{len(questions)}); raise data.world.num_entities_per_kind or lower the split sizes")
    return questions


def partition_prefix(set_index: int) -> str:
    """Doc id prefix of an entity set: "" for the base set, "w<i>/" for training set i (data.retriever.partition_of)."""
    return f"w{set_index}/" if set_index else ""


def _split_evenly(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if index < total % parts else 0) for index in range(parts)]


def generate_questions(entity_sets: list[list[Entity]], config: WorldConfig) -> dict[str, list[Question]]:
    """Test and validation questions about the first (base) set; training questions about the other sets,
    evenly, or about the base set too when it is the only one."""
    indexes, splits = [EntityIndex(entities) for entities in entity_sets], {}
    used_keys: list[set] = [set() for _ in entity_sets]  # one set's names may recur in another with other facts
    sizes = {"train": config.num_train, "validation": config.num_validation, "test": config.num_test}
    for split in GENERATION_ORDER:
        rng = random.Random(f"fanout-world:{config.seed}:questions:{split}")
        set_indexes = list(range(1, len(indexes))) if split == "train" and len(indexes) > 1 else [0]
        questions = []
        for structure, count in structure_counts(sizes[split], dict(config.structure_mix)).items():
            for set_index, share in zip(set_indexes, _split_evenly(count, len(set_indexes))):
                drawn = _sample_unique(structure, share, indexes[set_index], rng, used_keys[set_index])
                if len(indexes) > 1:  # names recur across the sets: a search must stay inside the question's set
                    for question in drawn:
                        question.metadata[PARTITION_KEY] = partition_prefix(set_index).rstrip("/")
                questions.extend(drawn)
        rng.shuffle(questions)
        for position, question in enumerate(questions):
            question.id = f"world-{split}-{position:06d}"
        splits[split] = questions
    return {split: splits[split] for split in SPLITS}


# ----------------------------------------------------------------------------------------------
# Build, write, load, cache
# ----------------------------------------------------------------------------------------------


NAME_MODES = ("per_set", "shared")


def names_stream(config: WorldConfig, set_index: int) -> str:
    """The seed of a set's name draws: its own per world seed and set, or one for every set of every seed."""
    if config.names == "shared":
        return "fanout-world:shared-names"
    return f"fanout-world:{config.seed}:names:{set_index}"


def generate_entity_sets(config: WorldConfig) -> list[list[Entity]]:
    """The base set, then `config.train_worlds` training sets with their own facts, and their own names
    unless `config.names` is "shared"."""
    if config.num_entities_per_kind < 4:
        raise DataError(f"data.world.num_entities_per_kind is {config.num_entities_per_kind}; use at least 4")
    if config.train_worlds < 0:
        raise DataError(f"data.world.train_worlds is {config.train_worlds}; use 0 or more")
    if config.names not in NAME_MODES:
        raise DataError(f"data.world.names is {config.names!r}; valid: {', '.join(NAME_MODES)}")
    lexicon, entity_sets = name_lexicon(), []
    for set_index in range(config.train_worlds + 1):
        stream = f"fanout-world:{config.seed}:entities" + (f":{set_index}" if set_index else "")
        entity_sets.append(generate_entities(config.num_entities_per_kind, random.Random(stream),
                                             NameDrawer(lexicon, random.Random(names_stream(config, set_index))),
                                             partition_prefix(set_index)))
    return entity_sets


def generate_world(config: WorldConfig) -> World:
    """The whole world for a `data.config.WorldConfig` (seeded, deterministic)."""
    entity_sets = generate_entity_sets(config)
    entities = [entity for entity_set in entity_sets for entity in entity_set]
    documents = render_documents(entities, random.Random(f"fanout-world:{config.seed}:documents"), config.passage_style)
    return World(documents=documents, splits=generate_questions(entity_sets, config), entities=entities)


def world_config_hash(config: WorldConfig) -> str:
    payload = {"format_version": WORLD_FORMAT_VERSION, **asdict(config)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def _save(world: World, out_dir: Path, config: WorldConfig) -> None:
    write_corpus(out_dir / "corpus.jsonl", world.documents)
    for split, questions in world.splits.items():
        write_jsonl(out_dir / f"{split}.jsonl", (question.to_row() for question in questions))
    marker = {"hash": world_config_hash(config), "format_version": WORLD_FORMAT_VERSION,
              "config": asdict(config)}
    temporary = out_dir / f".world_config.json.{os.getpid()}.tmp"
    temporary.write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
    os.replace(temporary, out_dir / "world_config.json")  # written last: its presence means "complete"


def write_world(out_dir: str | os.PathLike, config: WorldConfig) -> Path:
    """Write DIR/corpus.jsonl, DIR/{train,validation,test}.jsonl and DIR/world_config.json; return DIR."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _save(generate_world(config), out_dir, config)
    return out_dir


def load_split(path: str | os.PathLike) -> list[Question]:
    questions = []
    for line, row in iter_jsonl(path):
        try:
            questions.append(Question.from_row(row))
        except (KeyError, TypeError, ValueError) as error:
            raise DataError(f"not a valid question row ({error})", str(path), line) from None
    return questions


def load_world(directory: str | os.PathLike) -> World:
    directory = Path(directory)
    missing = [name for name in ("corpus.jsonl", *(f"{split}.jsonl" for split in SPLITS))
               if not (directory / name).is_file()]
    if missing:
        raise DataError(f"not a generated world: missing {', '.join(missing)} "
                        f"(run `fanout data build-world --out {directory}`)", path=str(directory))
    return World(documents=load_corpus(directory / "corpus.jsonl"),
                 splits={split: load_split(directory / f"{split}.jsonl") for split in SPLITS})


def ensure_world(directory: str | os.PathLike, config) -> World:
    """The world cached in `directory` if built from this exact config; otherwise build and write it."""
    directory = Path(directory)
    marker = directory / "world_config.json"
    complete = all((directory / name).is_file() for name in ("corpus.jsonl", *(f"{s}.jsonl" for s in SPLITS)))
    if marker.is_file() and complete:
        try:
            cached_hash = json.loads(marker.read_text()).get("hash")
        except (json.JSONDecodeError, AttributeError):
            cached_hash = None
        if cached_hash == world_config_hash(config):
            return load_world(directory)
    directory.mkdir(parents=True, exist_ok=True)
    world = generate_world(config)
    _save(world, directory, config)
    return world
