"""The wording of the generated world: document sentences, facts and how they are asked, comparison templates.

Kept apart from data/world.py (which decides WHAT is true and asked) so the language can be extended
without touching the sampling logic. Every fact has one canonical sub-question (`query`, the search
query a scripted expert issues, always containing the entity name so BM25 finds its document) and
several phrasings for question text. Relations (entity -> entity) also have a noun phrase
("the director of {x}") from which bridge questions are composed: "When was the director of X born?".

    FACTS[("person", "birth_year")].query.format(x="Varlo Tenmis")   # "When was Varlo Tenmis born?"
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from data.registry import Registry


@dataclass(frozen=True)
class FactSpec:
    kind: str  # kind of the subject entity
    name: str  # key in Entity.facts
    query: str  # canonical sub-question; {x} is the subject name
    questions: tuple[str, ...]  # phrasings of the question; {x} is a name or a noun phrase
    target_kind: str | None = None  # kind of the entity the fact points to (None: a literal value)
    noun_phrase: str | None = None  # for relations: how to refer to the target ("the director of {x}")


_FACT_LIST = (
    FactSpec("person", "birth_year", "When was {x} born?",
             ("When was {x} born?", "In what year was {x} born?")),
    FactSpec("person", "birth_city", "Where was {x} born?",
             ("Where was {x} born?", "In which city was {x} born?"),
             "city", "the birth city of {x}"),
    FactSpec("film", "release_year", "When was {x} released?",
             ("When was {x} released?", "In what year was {x} released?", "What year did {x} come out?")),
    FactSpec("film", "director", "Who directed {x}?", ("Who directed {x}?", "Who was the director of {x}?"),
             "person", "the director of {x}"),
    FactSpec("film", "filming_city", "Where was {x} filmed?",
             ("Where was {x} filmed?", "In which city was {x} shot?"),
             "city", "the city where {x} was filmed"),
    FactSpec("film", "studio", "Which company produced {x}?",
             ("Which company produced {x}?", "Who produced {x}?"),
             "company", "the company that produced {x}"),
    FactSpec("company", "founding_year", "When was {x} founded?",
             ("When was {x} founded?", "In what year was {x} founded?")),
    FactSpec("company", "founder", "Who founded {x}?", ("Who founded {x}?", "Who was the founder of {x}?"),
             "person", "the founder of {x}"),
    FactSpec("company", "headquarters", "Where is {x} headquartered?",
             ("Where is {x} headquartered?", "In which city is {x} headquartered?"),
             "city", "the headquarters city of {x}"),
    FactSpec("city", "founding_year", "When was {x} founded?",
             ("When was {x} founded?", "In what year was {x} founded?")),
    FactSpec("city", "region", "In which region is {x}?",
             ("In which region is {x}?", "Which region is {x} in?")),
)
FACTS: dict[tuple[str, str], FactSpec] = {(fact.kind, fact.name): fact for fact in _FACT_LIST}


def _chains(max_hops: int) -> dict[int, list[tuple[FactSpec, ...]]]:
    """Every path of relations ending in any fact, by number of hops (2..max_hops)."""
    by_hops: dict[int, list[tuple[FactSpec, ...]]] = {1: [(fact,) for fact in _FACT_LIST]}
    for hops in range(2, max_hops + 1):
        by_hops[hops] = [
            chain + (fact,)
            for chain in by_hops[hops - 1] if chain[-1].target_kind
            for fact in _FACT_LIST if fact.kind == chain[-1].target_kind
        ]
    return {hops: chains for hops, chains in by_hops.items() if hops >= 2}


CHAINS_BY_HOPS = _chains(3)


@dataclass(frozen=True)
class ComparisonSpec:
    kind: str
    fact: str  # a year fact
    earliest_two: tuple[str, ...]  # {a}, {b}
    latest_two: tuple[str, ...]
    earliest_many: tuple[str, ...]  # {items} = "A, B and C"
    latest_many: tuple[str, ...]
    count_templates: tuple[str, ...]  # {items}, {direction} ("before"/"after"), {year}


def _comparison(
    kind: str, fact: str, which: str, verb: str, extra_earliest: tuple = (), extra_latest: tuple = ()
) -> ComparisonSpec:
    return ComparisonSpec(
        kind, fact,
        earliest_two=(f"{which} was {verb} first, {{a}} or {{b}}?",
                      f"{which} was {verb} earlier, {{a}} or {{b}}?", *extra_earliest),
        latest_two=(f"{which} was {verb} more recently, {{a}} or {{b}}?",
                    f"{which} was {verb} later, {{a}} or {{b}}?", *extra_latest),
        earliest_many=(f"Which of {{items}} was {verb} first?",
                       f"{which} among {{items}} was {verb} earliest?"),
        latest_many=(f"Which of {{items}} was {verb} most recently?",
                     f"{which} among {{items}} was {verb} last?"),
        count_templates=(f"How many of {{items}} were {verb} {{direction}} {{year}}?",),
    )


COMPARISONS = (
    _comparison("person", "birth_year", "Who", "born", ("Who is older, {a} or {b}?",),
                ("Who is younger, {a} or {b}?",)),
    _comparison("film", "release_year", "Which film", "released", ("Which came out earlier, {a} or {b}?",),
                ("Which came out later, {a} or {b}?",)),
    _comparison("company", "founding_year", "Which company", "founded",
                ("Which company is older, {a} or {b}?",)),
    _comparison("city", "founding_year", "Which city", "founded", ("Which city is older, {a} or {b}?",)),
)


# ----------------------------------------------------------------------------------------------
# Documents: 1-3 sentences per entity, the template of each sentence drawn from the seeded RNG
# ----------------------------------------------------------------------------------------------

DocumentRenderer = Callable[[object, random.Random], str]
DOCUMENT_RENDERERS: Registry[DocumentRenderer] = Registry("document renderer")  # keyed by entity kind


def register_document_renderer(kind: str) -> Callable[[DocumentRenderer], DocumentRenderer]:
    return DOCUMENT_RENDERERS.register(kind)


def _pick(rng: random.Random, templates: tuple[str, ...], **values) -> str:
    return rng.choice(templates).format(**values)


@register_document_renderer("person")
def render_person(entity, rng: random.Random) -> str:
    facts = entity.facts
    values = {"name": entity.name, "first": entity.name.split()[0], "year": facts["birth_year"],
              "city": facts["birth_city"], "job": facts["occupation"]}
    birth = _pick(rng, ("{name} was born in {city} in {year}.",
                        "{name} was born in {year} in the city of {city}.",
                        "{name} is a {job} born in {city} in {year}.",
                        "Born in {year} in {city}, {name} became a {job}."), **values)
    if values["job"] in birth:
        return birth
    occupation = _pick(rng, ("{first} worked as a {job}.", "{first} became known as a {job}."), **values)
    return f"{birth} {occupation}"


@register_document_renderer("film")
def render_film(entity, rng: random.Random) -> str:
    facts = entity.facts
    values = {"name": entity.name, "year": facts["release_year"], "director": facts["director"],
              "city": facts["filming_city"], "studio": facts["studio"]}
    first = _pick(rng, ("{name} is a {year} film directed by {director}.",
                        "{name} was released in {year} and directed by {director}.",
                        "Directed by {director}, {name} was released in {year}."), **values)
    second = _pick(rng, ("It was filmed in {city} and produced by {studio}.",
                         "The film was shot in {city}; {studio} produced it.",
                         "{studio} produced the film, which was shot on location in {city}."), **values)
    return f"{first} {second}"


@register_document_renderer("company")
def render_company(entity, rng: random.Random) -> str:
    facts = entity.facts
    values = {"name": entity.name, "year": facts["founding_year"], "founder": facts["founder"],
              "city": facts["headquarters"]}
    first = _pick(rng, ("{name} was founded in {year} by {founder}.", "{founder} founded {name} in {year}.",
                        "Founded by {founder} in {year}, {name} is a manufacturer."), **values)
    second = _pick(rng, ("The company is headquartered in {city}.", "Its headquarters are in {city}.",
                         "{name} is headquartered in {city}."), **values)
    return f"{first} {second}"


@register_document_renderer("city")
def render_city(entity, rng: random.Random) -> str:
    facts = entity.facts
    return _pick(rng, ("{name} is a city in the {region} region. It was founded in {year}.",
                       "Founded in {year}, {name} is a city in the {region} region.",
                       "{name} was founded in {year}. The city lies in the {region} region.",
                       "The city of {name}, in the {region} region, was founded in {year}."),
                 name=entity.name, region=facts["region"], year=facts["founding_year"])


# ----------------------------------------------------------------------------------------------
# Fact sheets (data.world.passage_style=facts): each kind's facts in one fixed order, each after the words
# its questions use, so the value a question asks for always follows the same label
# ----------------------------------------------------------------------------------------------

FACT_SHEET_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    "person": (("born", "birth_year"), ("born in", "birth_city"), ("occupation", "occupation")),
    "film": (("released", "release_year"), ("directed by", "director"), ("filmed in", "filming_city"),
             ("produced by", "studio")),
    "company": (("founded", "founding_year"), ("founded by", "founder"), ("headquartered in", "headquarters")),
    "city": (("founded", "founding_year"), ("region", "region")),
}
PASSAGE_STYLES = ("prose", "facts")


def render_fact_sheet(entity) -> str:
    """"born 1902 ; born in Zumstead ; occupation architect": the entity's facts, labelled, in a fixed order."""
    if entity.kind not in FACT_SHEET_FIELDS:
        raise KeyError(f"no fact sheet for entity kind {entity.kind!r}; known kinds: {', '.join(FACT_SHEET_FIELDS)}")
    return " ; ".join(f"{label} {entity.facts[key]}" for label, key in FACT_SHEET_FIELDS[entity.kind])
