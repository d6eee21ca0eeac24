"""The data package's config sections: the generated world, where questions come from, retrieval.

Typed dataclasses, each field documented once in the comment beside it (docs/CONFIG.md is generated
from these comments). `rl.config.ExperimentConfig` composes them with the other packages' sections
and loads YAML onto them; code in data/ takes these sections, never the whole experiment config.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class WorldConfig:
    seed: int = 0  # seed of the generated world (entities, documents, questions)
    num_entities_per_kind: int = 100  # entities of each kind (people, films, cities, companies), per entity set
    # Training questions ask about this many extra entity sets, each with its own names and re-drawn facts
    # (their documents join the corpus); validation and test ask about the base set only, so no test entity
    # or fact occurs in a training question and only reading the retrieved passages pays. 0: one shared set.
    train_worlds: int = 0
    # Who gets which names: "per_set" (every entity set, and every world seed, draws its own combinations of
    # lexicon words) or "shared" (every set of every seed holds the same names, each with facts drawn anew,
    # so a name recurs in every set and the same question text has another answer in each: only the
    # retrieved passage tells them apart)
    names: str = "per_set"
    num_train: int = 4000  # training questions
    # How each entity's passage is written: "prose" (1-3 sentences in randomly drawn templates) or "facts" (the
    # same facts as one fixed-order sheet, "born 1902 ; born in Zumstead ; occupation architect")
    passage_style: str = "prose"
    num_validation: int = 200  # validation questions
    num_test: int = 300  # test questions
    # Share of each question structure in every split.
    structure_mix: dict[str, float] = field(
        default_factory=lambda: {"parallel": 0.5, "sequential": 0.35, "single": 0.15}
    )


WORLD_REDRAWS = ("all", "notes")  # what a training world draws anew (AppsWorldConfig.world_redraw)


@dataclass
class AppsWorldConfig:
    seed: int = 0  # seed of the generated apps world (contacts, calendars, mail, files, shop and the tasks)
    num_people: int = 24  # contacts (each with a calendar and maybe mail in the inbox)
    num_products: int = 24  # products in the shop
    num_days: int = 5  # calendar days 1..num_days (working hours 9 to 17)
    num_train: int = 1000  # training tasks of the base world and the training worlds (split: see world_tasks)
    # Training tasks also come from this many extra apps worlds (w1, w2, ...), each with re-drawn records
    # (contacts, calendars, mail, files, shop; which ones: world_redraw); validation and test act on the base
    # world only, so a policy cannot solve a test task from arguments it learnt by heart: it has to copy them
    # from the instruction and read them from what the tools return. 0: every task acts on the base world.
    train_worlds: int = 0
    # Tasks per training world: 0 splits num_train evenly over the base world and the training worlds;
    # otherwise the base world keeps num_train tasks and every training world adds this many.
    world_tasks: int = 0
    # The task families the training worlds' tasks are drawn from, evenly (empty: every family, in
    # structure_mix). ["cancel_from_note"]: the test tasks' note paths, each naming another order in each
    # world, so that a policy learns to write every path and to read the order from the note.
    world_families: list[str] = field(default_factory=list)
    # What a training world draws anew: "all" (a state of its own: records, and names as `names` says) or
    # "notes" (the base world's state, with the product each wishlist note names and the order each order note
    # names drawn anew: no name or record the base world lacks, so only reading a note tells what it names)
    world_redraw: str = "all"
    # Who gets which identities: "per_set" (every world draws its own contact names, addresses, SKUs and product
    # names) or "shared" (every world of every seed holds the same ones, with its records drawn anew: the same
    # instruction then needs other arguments and gets other results in each world)
    names: str = "per_set"
    num_validation: int = 100  # validation tasks
    num_test: int = 150  # test tasks
    # Weights of the task families among the base world's training tasks ({family: weight}; a family not named
    # weighs 1): {"stock_total": 2.5} draws two and a half times as many stock_total tasks as of any other
    # family. Empty: by structure_mix, as validation and test always are.
    train_families: dict[str, float] = field(default_factory=dict)
    # Share of each dependency structure in every split: "independent" (one round of parallel calls),
    # "chain" (one call per round, each needing the last) and "mixed" (parallel rounds that depend on each other).
    # A structure's tasks are drawn from its families evenly; the default gives each of the ten families (2
    # independent, 4 chain, 4 mixed: data/apps/tasks.py) about a tenth of every split.
    structure_mix: dict[str, float] = field(
        default_factory=lambda: {"independent": 0.2, "chain": 0.4, "mixed": 0.4}
    )


@dataclass
class MixedDataConfig:
    # Share of the training questions drawn from apps tasks (the rest from the QA world), in (0, 1): each step's
    # batch holds this share on average, and so do the SFT warm-start's demonstrations
    apps_fraction: float = 0.5


@dataclass
class DataConfig:
    # "world" (the generated QA world, no download), "files" (local benchmark files), "apps" (the generated
    # apps world, its tools served by the apps MCP server: docs/APPS.md) or "mixed" (the QA world and the apps
    # world in one run, each question played and scored in its own environment: docs/APPS.md, "Mixed training")
    source: str = "world"
    world: WorldConfig = field(default_factory=WorldConfig)
    world_dir: str = ""  # where the generated world is written/cached; empty: <run_dir>/world
    # Local benchmark files for source=files: {dataset_name: path.jsonl|.parquet}.
    train_files: dict[str, str] = field(default_factory=dict)
    eval_files: dict[str, str] = field(default_factory=dict)  # evaluated by `fanout eval` (same format)
    validation_files: dict[str, str] = field(default_factory=dict)  # evaluated every eval.every_steps in training
    # Generic loader for any other JSONL/Parquet: {dataset_name: {role: column}}, roles question, answers, id,
    # structure, sub_questions (data/loaders.py). A dataset listed here is read through its columns.
    columns: dict[str, dict[str, str]] = field(default_factory=dict)
    corpus_path: str = ""  # wiki-style JSONL corpus ({"id", "contents"}) for source=files
    on_malformed_row: str = "error"  # "error" (stop, naming file and line) or "skip" (count and skip)
    max_train_questions: int = 0  # 0: all
    apps: AppsWorldConfig = field(default_factory=AppsWorldConfig)  # the apps world of data.source=apps or mixed
    apps_world_dir: str = ""  # where the apps world is written/cached; empty: <run_dir>/apps_world
    mixed: MixedDataConfig = field(default_factory=MixedDataConfig)  # how data.source=mixed mixes the two worlds


@dataclass
class RetrieverConfig:
    backend: str = "bm25"  # "bm25" (in-process bm25s) or "http" (a retrieval server)
    url: str = "http://127.0.0.1:8000/retrieve"  # retrieval server endpoint for backend=http
    topk: int = 3  # passages returned per sub-query
    index_dir: str = ""  # where the BM25 index is saved/loaded; empty: next to the corpus
    timeout_s: float = 10.0  # per-request timeout of the HTTP client
    retries: int = 2  # HTTP client retries on connection errors / 5xx
    max_passage_chars: int = 300  # each passage is truncated to this many characters for the model
