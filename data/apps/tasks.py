"""The apps tasks: instructions whose tool calls form a known dependency graph, with gold rounds and answers.

Each `AppTask` carries its instruction, its gold answers, its dependency `structure` and its gold call
graph as rounds (`gold_rounds`: a list of rounds, each a list of `{"name", "arguments"}` calls that
depend only on earlier rounds). `len(gold_rounds)` is the fewest model turns with tool calls that can
solve the task, which an efficiency reward and a scripted solver use. Structures:

- "independent": one round of 2-4 calls that need nothing from each other (stock of three products;
  who is busiest; send one notice to three people);
- "chain": one call per round, each needing the previous result (find a contact's email, then their
  message, then reply; read a note naming a SKU, then order it);
- "mixed": rounds of parallel calls that depend on earlier rounds (look up three people, then their
  free hours, then book the common slot).

Tasks are graded by what they leave behind, not by how they got there (data/apps/verify.py): the
verifier replays the gold rounds on the base state and compares end states, and checks the answer.
Task families are registered by name in TASK_FAMILIES with their structure. Generation mirrors the QA
world (data/world.py): test first, then validation, then train, each split from its own seeded stream,
and no two tasks anywhere share a uniqueness key (family + what it asks), so the splits are disjoint.

What it simplifies on purpose: instructions give exact subjects, bodies and file contents, so an end
state is checkable field by field; a task that only acts answers "done".

    splits = generate_tasks(generate_base_state(config), config)     # {"train": [...], ...}
    splits["test"][0].gold_rounds, splits["test"][0].answers
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Callable

from data.apps.state import WORK_HOURS
from data.config import AppsWorldConfig
from data.errors import DataError
from data.registry import Registry
from data.types import ENVIRONMENT_KEY, PARTITION_KEY, Question

APPS_ENVIRONMENT = "apps"  # Question.metadata["environment"] of an apps task (rewards and metrics route on it)
APP_STRUCTURES = ("independent", "chain", "mixed")
SPLIT_ORDER = ("test", "validation", "train")
# Question.structure of each app structure: one parallel round, or several rounds in a row.
QUESTION_STRUCTURE = {"independent": "parallel", "chain": "sequential", "mixed": "sequential"}
NOTICE_SUBJECTS = ("Office closed on Friday", "New wifi password", "Fire drill at 3pm", "Parking changes",
                   "Printer moved", "Holiday schedule")
MAX_DRAWS_PER_TASK = 200
WORLD_KEY = "world"  # AppTask.metadata: the training world a task acts on (absent: the base world)


@dataclass
class AppTask:
    """One apps task: what to do, what to answer, and the gold call graph in rounds."""

    id: str
    instruction: str
    answers: list[str]  # accepted final answers ("done" for tasks that only act)
    structure: str  # "independent", "chain" or "mixed"
    family: str  # the registered family that generated it
    gold_rounds: list[list[dict]]  # rounds of {"name", "arguments"}; a round needs only earlier rounds
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.structure not in APP_STRUCTURES:
            raise ValueError(f"task {self.id!r}: structure {self.structure!r} is not one of {APP_STRUCTURES}")
        if not self.gold_rounds or not all(self.gold_rounds):
            raise ValueError(f"task {self.id!r}: gold_rounds must be non-empty rounds of calls")

    @property
    def min_rounds(self) -> int:
        return len(self.gold_rounds)

    @property
    def world(self) -> str:
        """The training world the task acts on ("w1", ...; AppsWorldConfig.train_worlds), "" for the base world."""
        return self.metadata.get(WORLD_KEY, "")

    @property
    def num_calls(self) -> int:
        return sum(len(round_calls) for round_calls in self.gold_rounds)

    def to_row(self) -> dict:
        return asdict(self)

    @classmethod
    def from_row(cls, row: dict, path: str | None = None, line: int | None = None) -> "AppTask":
        try:
            return cls(**row)
        except (TypeError, ValueError) as error:
            raise DataError(f"not an apps task row ({error})", path, line) from None

    def to_question(self) -> Question:
        """The task as the agent loop's Question (the task's fields in metadata["app_task"]). A training world's
        task names its world as the question's partition: its calls carry it, and the apps server starts the
        episode from that world's state."""
        metadata = {ENVIRONMENT_KEY: APPS_ENVIRONMENT, "app_task": self.to_row()}
        if self.world:
            metadata[PARTITION_KEY] = self.world
        return Question(id=self.id, question=self.instruction, answers=list(self.answers),
                        structure=QUESTION_STRUCTURE[self.structure], source="apps", metadata=metadata)


def call(name: str, **arguments) -> dict:
    return {"name": name, "arguments": arguments}


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


# A draft is (uniqueness key, task with an empty id); None: a degenerate sample (a tie, no slot), draw again.
Draft = tuple[tuple, AppTask]
TaskSampler = Callable[[dict, random.Random], "Draft | None"]


@dataclass(frozen=True)
class TaskFamily:
    structure: str
    sampler: TaskSampler


TASK_FAMILIES: Registry[TaskFamily] = Registry("apps task family")


def register_family(name: str, structure: str) -> Callable[[TaskSampler], TaskSampler]:
    if structure not in APP_STRUCTURES:
        raise ValueError(f"task family {name!r}: structure {structure!r} is not one of {APP_STRUCTURES}")

    def decorator(sampler: TaskSampler) -> TaskSampler:
        TASK_FAMILIES.add(name, TaskFamily(structure, sampler))
        return sampler

    return decorator


def _task(family: str, instruction: str, answers: list[str], rounds: list[list[dict]]) -> AppTask:
    return AppTask(id="", instruction=instruction, answers=answers, structure=TASK_FAMILIES[family].structure,
                   family=family, gold_rounds=rounds)


def _events_on(state: dict, email: str, day: int) -> list[dict]:
    return [event for event in state["events"].values() if event["day"] == day and email in event["attendees"]]


def _free_hours(state: dict, email: str, day: int) -> list[int]:
    busy = {event["hour"] for event in _events_on(state, email, day)}
    return [hour for hour in WORK_HOURS if hour not in busy]


def _num_days(state: dict) -> int:
    return max(event["day"] for event in state["events"].values())


# ----------------------------------------------------------------------------------------------
# independent: one round of parallel calls
# ----------------------------------------------------------------------------------------------


@register_family("busiest_person", "independent")
def sample_busiest_person(state: dict, rng: random.Random) -> Draft | None:
    people = rng.sample(list(state["contacts"].values()), rng.choice((2, 3)))
    day = rng.randint(1, _num_days(state))
    counts = [len(_events_on(state, person["email"], day)) for person in people]
    if counts.count(max(counts)) > 1:
        return None
    emails = [person["email"] for person in people]
    text = f"On day {day}, which of {_join(emails)} has the most events? Answer with the email address."
    task = _task("busiest_person", text, [emails[counts.index(max(counts))]],
                 [[call("calendar_list_events", email=email, day=day) for email in emails]])
    return ("busiest_person", day, tuple(sorted(emails))), task


@register_family("send_notice", "independent")
def sample_send_notice(state: dict, rng: random.Random) -> Draft | None:
    emails = [person["email"] for person in rng.sample(list(state["contacts"].values()), rng.choice((2, 3)))]
    subject = rng.choice(NOTICE_SUBJECTS)
    body = f"Please note: {subject.lower()}."
    text = (f"Send an email with the subject '{subject}' and the body '{body}' to {_join(emails)}. "
            "Answer done when you have sent them.")
    task = _task("send_notice", text, ["done"],
                 [[call("mail_send", to=email, subject=subject, body=body) for email in emails]])
    return ("send_notice", subject, tuple(sorted(emails))), task


# ----------------------------------------------------------------------------------------------
# chain: one call per round, each needing the previous result
# ----------------------------------------------------------------------------------------------


# Every contact wrote the user one message; the reply's body makes a sender's tasks several (24 contacts x 6
# bodies), so the training split keeps as many reply tasks as a tenth of its tasks asks for after the test and
# validation splits, drawn first, have taken theirs.
REPLY_BODIES = ("Thanks, I will take a look.", "Got it, I will reply soon.", "Noted, talk to you on Monday.",
                "Sounds good to me.", "Sure, send me the details.", "Happy to help with this.")


@register_family("reply_to_sender", "chain")
def sample_reply_to_sender(state: dict, rng: random.Random) -> Draft | None:
    message = rng.choice(list(state["inbox"].values()))
    (contact,) = [person for person in state["contacts"].values() if person["email"] == message["from"]]
    reply_subject, body = f"Re: {message['subject']}", rng.choice(REPLY_BODIES)
    text = (f"Find the email address of {contact['name']}, look up the message they sent you, and reply to them "
            f"with the subject 'Re: <the subject of their message>' and the body '{body}'. Answer with the "
            "subject of their message.")
    task = _task("reply_to_sender", text, [message["subject"]],
                 [[call("contacts_search", text=contact["name"])],
                  [call("mail_list_inbox", from_email=contact["email"])],
                  [call("mail_send", to=contact["email"], subject=reply_subject, body=body)]])
    return ("reply_to_sender", contact["id"], body), task


@register_family("order_from_note", "chain")
def sample_order_from_note(state: dict, rng: random.Random) -> Draft | None:
    path = rng.choice(sorted(path for path in state["files"] if path.startswith("/notes/wishlist-")))
    sku = state["files"][path]["content"].removeprefix("Remember to buy ").removesuffix(".")
    product = state["products"][sku]
    quantity = rng.randint(1, 3)
    if product["stock"] < quantity:
        return None
    recipient = rng.choice(list(state["contacts"].values()))["email"]
    text = (f"Order {quantity} unit{'s' if quantity > 1 else ''} of the product whose SKU is written in {path}, "
            f"shipped to {recipient}. Answer with the order total.")
    task = _task("order_from_note", text, [str(product["price"] * quantity)],
                 [[call("files_read", path=path)],
                  [call("shop_place_order", sku=sku, quantity=quantity, ship_to=recipient)]])
    return ("order_from_note", path, quantity, recipient), task


@register_family("book_earliest_slot", "chain")
def sample_book_earliest_slot(state: dict, rng: random.Random) -> Draft | None:
    contact = rng.choice(list(state["contacts"].values()))
    day = rng.randint(1, _num_days(state))
    free = _free_hours(state, contact["email"], day)
    if not free:
        return None
    title = "Catch-up"
    text = (f"Find the email address of {contact['name']}, check their free hours on day {day}, and book a "
            f"one-hour event titled '{title}' with them at their earliest free hour. Answer with that hour.")
    task = _task("book_earliest_slot", text, [str(free[0])],
                 [[call("contacts_search", text=contact["name"])],
                  [call("calendar_free_hours", email=contact["email"], day=day)],
                  [call("calendar_create_event", title=title, day=day, hour=free[0], attendees=[contact["email"]])]])
    return ("book_earliest_slot", contact["id"], day), task


@register_family("cancel_from_note", "chain")
def sample_cancel_from_note(state: dict, rng: random.Random) -> Draft | None:
    path = rng.choice(sorted(path for path in state["files"] if path.startswith("/notes/order-")))
    order_id = state["files"][path]["content"].split()[1]
    text = f"Cancel the order named in {path}. Answer with the refund amount."
    task = _task("cancel_from_note", text, [str(state["orders"][order_id]["total"])],
                 [[call("files_read", path=path)], [call("shop_cancel_order", order_id=order_id)]])
    return ("cancel_from_note", path), task


# ----------------------------------------------------------------------------------------------
# mixed: parallel rounds that depend on earlier rounds
# ----------------------------------------------------------------------------------------------


@register_family("stock_total", "mixed")
def sample_stock_total(state: dict, rng: random.Random) -> Draft | None:
    products = rng.sample(list(state["products"].values()), rng.choice((2, 3, 4)))
    skus, stocks = [product["sku"] for product in products], [product["stock"] for product in products]
    text = f"How many units of {_join(skus)} are in stock in total? Answer with the number."
    task = _task("stock_total", text, [str(sum(stocks))],
                 [[call("shop_get_product", sku=sku) for sku in skus], [call("calculator_sum", numbers=stocks)]])
    return ("stock_total", tuple(sorted(skus))), task


@register_family("schedule_meeting", "mixed")
def sample_schedule_meeting(state: dict, rng: random.Random) -> Draft | None:
    people = rng.sample(list(state["contacts"].values()), rng.choice((2, 3)))
    day = rng.randint(1, _num_days(state))
    common = set(WORK_HOURS)
    for person in people:
        common &= set(_free_hours(state, person["email"], day))
    if not common:
        return None
    hour, title = min(common), "Project meeting"
    names, emails = [person["name"] for person in people], [person["email"] for person in people]
    text = (f"Book a one-hour event titled '{title}' on day {day} with {_join(names)} at the earliest hour when "
            "all of them are free. Answer with that hour.")
    task = _task("schedule_meeting", text, [str(hour)],
                 [[call("contacts_search", text=name) for name in names],
                  [call("calendar_free_hours", email=email, day=day) for email in emails],
                  [call("calendar_create_event", title=title, day=day, hour=hour, attendees=emails)]])
    return ("schedule_meeting", day, tuple(sorted(emails))), task


@register_family("share_agenda", "mixed")
def sample_share_agenda(state: dict, rng: random.Random) -> Draft | None:
    path = rng.choice(sorted(path for path in state["files"] if path.startswith("/docs/")))
    people = rng.sample(list(state["contacts"].values()), rng.choice((2, 3)))
    content, subject = state["files"][path]["content"], "Agenda"
    names = [person["name"] for person in people]
    text = (f"Email the text of {path} to {_join(names)}, each with the subject '{subject}' and the file's "
            "text as the body. Answer done when you have sent them.")
    task = _task("share_agenda", text, ["done"],
                 [[call("files_read", path=path)] + [call("contacts_search", text=name) for name in names],
                  [call("mail_send", to=person["email"], subject=subject, body=content) for person in people]])
    return ("share_agenda", path, tuple(sorted(names))), task


@register_family("low_stock_report", "mixed")
def sample_low_stock_report(state: dict, rng: random.Random) -> Draft | None:
    products = rng.sample(list(state["products"].values()), rng.choice((3, 4)))
    threshold = rng.choice((5, 10, 15, 20))
    skus = [product["sku"] for product in products]
    low = [product["sku"] for product in products if product["stock"] < threshold]
    report_path = "/reports/low-stock.txt"
    text = (f"Check the stock of {_join(skus)} and write the SKUs with fewer than {threshold} units in stock to "
            f"{report_path}, separated by ', ' in the order given here (write 'none' if there are none). "
            f"Answer with how many there are.")
    task = _task("low_stock_report", text, [str(len(low))],
                 [[call("shop_get_product", sku=sku) for sku in skus],
                  [call("files_write", path=report_path, content=", ".join(low) or "none")]])
    return ("low_stock_report", threshold, tuple(skus)), task


# ----------------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------------


def structure_counts(total: int, mix: dict[str, float]) -> dict[str, int]:
    """Tasks of each structure in a split of `total` (rounding leftovers go to the largest shares)."""
    unknown = set(mix) - set(APP_STRUCTURES)
    if unknown or not mix or any(share < 0 for share in mix.values()) or sum(mix.values()) <= 0:
        raise ValueError(f"AppsWorldConfig.structure_mix must map {APP_STRUCTURES} to non-negative shares, got {mix}")
    weights = {structure: share / sum(mix.values()) for structure, share in mix.items()}
    counts = {structure: int(total * share) for structure, share in weights.items()}
    for structure in sorted(weights, key=weights.get, reverse=True)[: total - sum(counts.values())]:
        counts[structure] += 1
    return counts


def _sample_structure(state: dict, structure: str, count: int, rng: random.Random, seen: set,
                      families: list[str] | None = None,
                      what: str = "AppsWorldConfig.num_train") -> list[AppTask]:
    """`count` distinct tasks from `families` (default: the families of `structure`); `what` names the setting
    to lower when the world holds fewer."""
    if families is None:
        families = [name for name in TASK_FAMILIES.names() if TASK_FAMILIES[name].structure == structure]
    tasks: list[AppTask] = []
    draws = 0
    while len(tasks) < count:
        draws += 1
        if draws > MAX_DRAWS_PER_TASK * max(count, 1):
            raise DataError(f"could not draw {count} distinct {structure} tasks from this apps world (got "
                            f"{len(tasks)}); lower {what} or raise num_people / num_products")
        draft = TASK_FAMILIES[rng.choice(families)].sampler(state, rng)
        if draft is None or draft[0] in seen:
            continue
        seen.add(draft[0])
        tasks.append(draft[1])
    return tasks


def _draw_tasks(state: dict, config: AppsWorldConfig, count: int, rng: random.Random, seen: set,
                id_prefix: str) -> list[AppTask]:
    """`count` tasks over `state` in config.structure_mix, distinct by uniqueness key (`seen` across calls),
    shuffled, ids `<id_prefix>-<n>`."""
    tasks = []
    for structure, structure_count in structure_counts(count, config.structure_mix).items():
        tasks.extend(_sample_structure(state, structure, structure_count, rng, seen))
    return _numbered(tasks, rng, id_prefix)


def family_counts(total: int, weights: dict[str, float]) -> dict[str, int]:
    """Tasks of each registered family in a split of `total` in proportion to `weights` (a family not named
    weighs 1; rounding leftovers go to the largest remainders, ties to the family registered first)."""
    unknown = sorted(set(weights) - set(TASK_FAMILIES.names()))
    if unknown:
        raise DataError(f"data.apps.train_families names {unknown}, which are no apps task families; "
                        f"valid: {', '.join(TASK_FAMILIES.names())}")
    full = {name: float(weights.get(name, 1.0)) for name in TASK_FAMILIES.names()}
    total_weight = sum(full.values())
    if any(weight < 0 for weight in full.values()) or total_weight <= 0:
        raise DataError(f"data.apps.train_families weights must be >= 0 with a positive sum, got {weights}")
    shares = {name: total * weight / total_weight for name, weight in full.items()}
    counts = {name: int(share) for name, share in shares.items()}
    remainders = {name: round(share - counts[name], 9) for name, share in shares.items()}  # equal shares tie
    leftovers = sorted(shares, key=lambda name: -remainders[name])[: total - sum(counts.values())]
    for name in leftovers:
        counts[name] += 1
    return counts


def _draw_family_tasks(state: dict, weights: dict[str, float], count: int, rng: random.Random, seen: set,
                       id_prefix: str) -> list[AppTask]:
    """`count` tasks over `state`, each family's share by `weights` (family_counts), distinct by uniqueness
    key, shuffled, ids `<id_prefix>-<n>`."""
    tasks = []
    for family, family_count in family_counts(count, weights).items():
        tasks.extend(_sample_structure(state, family, family_count, rng, seen, families=[family],
                                       what="data.apps.train_families or num_train"))
    return _numbered(tasks, rng, id_prefix)


def _numbered(tasks: list[AppTask], rng: random.Random, id_prefix: str) -> list[AppTask]:
    """`tasks` shuffled, with ids `<id_prefix>-<n>` in their new order."""
    rng.shuffle(tasks)
    for index, task in enumerate(tasks):
        task.id = f"{id_prefix}-{index:05d}"
    return tasks


def generate_tasks(base_state: dict, config: AppsWorldConfig,
                   num_train: int | None = None) -> dict[str, list[AppTask]]:
    """Train, validation and test tasks over `base_state`, disjoint by uniqueness key, ids `apps-<split>-<n>`
    (num_train: the training tasks of the base world, default config.num_train)."""
    sizes = {"train": config.num_train if num_train is None else num_train, "validation": config.num_validation,
             "test": config.num_test}
    seen: set = set()
    splits = {}
    for split in SPLIT_ORDER:  # test, validation, then train: train_families leaves the held-out splits alone
        rng = random.Random(f"apps-tasks-{config.seed}-{split}")
        if split == "train" and config.train_families:
            splits[split] = _draw_family_tasks(base_state, config.train_families, sizes[split], rng, seen,
                                               f"apps-{split}")
        else:
            splits[split] = _draw_tasks(base_state, config, sizes[split], rng, seen, f"apps-{split}")
    return {split: splits[split] for split in ("train", "validation", "test")}


def generate_world_tasks(state: dict, config: AppsWorldConfig, world: str, count: int) -> list[AppTask]:
    """`count` training tasks over the state of training world `world` ("w1", ...), ids `apps-train-<world>-<n>`;
    each names its world (AppTask.world). They come from config.world_families, evenly, when it names some,
    else from every family in config.structure_mix."""
    rng = random.Random(f"apps-tasks-{config.seed}-train-{world}")
    if not config.world_families:
        tasks = _draw_tasks(state, config, count, rng, set(), f"apps-train-{world}")
    else:
        unknown = sorted(set(config.world_families) - set(TASK_FAMILIES.names()))
        if unknown:
            raise DataError(f"data.apps.world_families names {unknown}, which are no apps task families; "
                            f"valid: {', '.join(TASK_FAMILIES.names())}")
        families = sorted(set(config.world_families))
        tasks = _numbered(_sample_structure(state, "/".join(families), count, rng, set(), families=families,
                                            what="data.apps.world_tasks"), rng, f"apps-train-{world}")
    for task in tasks:
        task.metadata[WORLD_KEY] = world
    return tasks


__all__ = ["APPS_ENVIRONMENT", "APP_STRUCTURES", "AppTask", "TASK_FAMILIES", "family_counts",
           "generate_tasks", "generate_world_tasks", "register_family", "structure_counts"]
