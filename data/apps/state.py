"""The apps' data: one plain JSON-like dict holding the state of five small apps, generated from a seed.

An episode of the apps environment acts on its own copy of this state (the MCP server keeps one per
episode). The apps and their collections:

- contacts: `{"contacts": {id: {"id", "name", "email", "phone", "city"}}}`
- calendar: `{"events": {id: {"id", "title", "day", "hour", "attendees"}}}` (one-hour events, days
  1..num_days, working hours 9..16 as start hours; attendees are emails)
- mail: `{"inbox": {id: {"id", "from", "subject", "body"}}, "sent": {id: {"id", "to", "subject", "body"}}}`
- files: `{"files": {path: {"path", "content"}}}`
- shop: `{"products": {sku: {"sku", "name", "price", "stock"}}, "orders": {id: {"id", "sku", "quantity",
  "ship_to", "total", "status"}}}`
- `counters`: the next number of each kind of id the tools create (events, sent mail, orders).

Names are nonce words (data/world.py's NonceNames), so no model knows a contact without looking it up.
Everything is seeded with one `random.Random`: the same AppsWorldConfig gives the same state, and a training
world (`world_index` > 0) draws its own names and records from its own stream. With `names: shared`, the
identities (contact names, addresses, phones, city names, SKUs, product names) come from one stream that
every world of every seed shares, and only the records around them (calendars, mail, stock, prices, orders,
notes, which city a contact lives in) are drawn per world.

What it simplifies on purpose: one user ("me"), whole-hour events, integer prices, no clock (created
records carry no timestamps, so an end state does not depend on when a call ran).

    state = generate_base_state(AppsWorldConfig(seed=0))
    state["contacts"]["c01"]["email"]
"""

from __future__ import annotations

import json
import random

from data.config import AppsWorldConfig
from data.errors import DataError
from data.world import NAME_MODES, NonceNames

WORK_HOURS = tuple(range(9, 17))  # start hours of one-hour events
USER_EMAIL = "me@fanout.example"
EMAIL_DOMAINS = ("mailo.example", "postra.example", "kivo.example")
PRODUCT_NOUNS = ("Lamp", "Kettle", "Notebook", "Backpack", "Headset", "Mug", "Chair", "Blanket", "Charger",
                 "Umbrella", "Bottle", "Scarf", "Speaker", "Planner")
EVENT_TITLES = ("Standup", "Review", "Planning", "Lunch", "Workshop", "Interview", "Sync", "Demo")
MAIL_SUBJECTS = ("Budget draft", "Trip photos", "Quarterly numbers", "Venue options", "Reading list",
                 "Design notes", "Invoice question", "Team dinner", "Launch checklist", "Hiring plan")
AGENDA_TOPICS = ("roadmap", "hiring", "budget", "launch", "offsite", "migration", "security", "pricing")
CITIES_PER_WORLD = 6
# Orders in the shop, per product, and the notes that name one (one cancel_from_note task each). The test and
# validation splits, drawn first, take about 20 of them; with a note for each of the 96 orders, the training split
# keeps as many cancel_from_note tasks as a tenth of its 1000 tasks asks for, or nearly (with 32 notes it kept 17,
# and the policy learnt the family at 0 of 11 test tasks: docs/RESULTS.md, "Apps").
ORDERS_PER_PRODUCT = 4
ORDER_NOTES = 96
BUSY_SHARE = 0.35  # chance that a working hour of a person's day holds an event
# data.apps.names=shared: the one stream of every world's identities (contact names, e-mail addresses, phones,
# city names, SKUs, product names); the records around them come from the world's own stream
SHARED_IDENTITIES_STREAM = "apps-identities"


def _contacts(config: AppsWorldConfig, names: NonceNames, ids: random.Random, rng: random.Random) -> dict[str, dict]:
    cities = [names.word((1, 2), ("ford", "holm", "vik", "dale", "port")) for _ in range(CITIES_PER_WORLD)]
    contacts = {}
    for index in range(config.num_people):
        first, last = names.word((2,)), names.word((2, 3))
        contact_id = f"c{index + 1:02d}"
        contacts[contact_id] = {
            "id": contact_id, "name": f"{first} {last}",
            "email": f"{first.lower()}.{last.lower()}@{ids.choice(EMAIL_DOMAINS)}",
            "phone": f"+1-555-{ids.randrange(10000):04d}", "city": rng.choice(cities),
        }
    return contacts


def _events(contacts: dict[str, dict], config: AppsWorldConfig, rng: random.Random) -> dict[str, dict]:
    events = {}
    for contact in contacts.values():
        for day in range(1, config.num_days + 1):
            for hour in WORK_HOURS:
                if rng.random() < BUSY_SHARE:
                    event_id = f"ev{len(events) + 1:04d}"
                    events[event_id] = {"id": event_id, "title": rng.choice(EVENT_TITLES), "day": day,
                                        "hour": hour, "attendees": [contact["email"]]}
    return events


def _inbox(contacts: dict[str, dict], rng: random.Random) -> dict[str, dict]:
    """Every contact wrote the user exactly one message."""
    inbox = {}
    for contact in contacts.values():
        message_id = f"m{len(inbox) + 1:03d}"
        subject = rng.choice(MAIL_SUBJECTS)
        inbox[message_id] = {"id": message_id, "from": contact["email"], "subject": subject,
                             "body": f"Hi, please have a look at the {subject.lower()} when you can."}
    return inbox


def _products(config: AppsWorldConfig, names: NonceNames, ids: random.Random, rng: random.Random) -> dict[str, dict]:
    products = {}
    skus = ids.sample(range(1000, 10000), config.num_products)
    for sku_number in skus:
        sku = f"SKU-{sku_number}"
        products[sku] = {"sku": sku, "name": f"{names.word((2,))} {ids.choice(PRODUCT_NOUNS)}",
                         "price": rng.randrange(5, 200), "stock": rng.randrange(0, 40)}
    return products


def _orders(contacts: dict[str, dict], products: dict[str, dict], rng: random.Random) -> dict[str, dict]:
    orders = {}
    for index in range(max(4, ORDERS_PER_PRODUCT * len(products))):
        product = rng.choice(list(products.values()))
        quantity = rng.randint(1, 3)
        order_id = f"o{index + 1:04d}"
        orders[order_id] = {"id": order_id, "sku": product["sku"], "quantity": quantity,
                            "ship_to": rng.choice(list(contacts.values()))["email"],
                            "total": product["price"] * quantity, "status": "placed"}
    return orders


def _files(products: dict[str, dict], orders: dict[str, dict], rng: random.Random) -> dict[str, dict]:
    """Agendas, wishlist notes naming a product SKU, and notes naming an order id."""
    files = {}

    def add(path: str, content: str) -> None:
        files[path] = {"path": path, "content": content}

    for topic in AGENDA_TOPICS:
        points = rng.sample(("goals", "risks", "owners", "dates", "costs", "open questions"), 3)
        add(f"/docs/{topic}-agenda.txt", f"Agenda ({topic}): {', '.join(points)}.")
    for index, product in enumerate(rng.sample(list(products.values()), min(10, len(products)))):
        add(f"/notes/wishlist-{index + 1}.txt", wishlist_note(product["sku"]))
    for index, order in enumerate(rng.sample(list(orders.values()), min(ORDER_NOTES, len(orders)))):
        add(f"/notes/order-{index + 1}.txt", order_note(order["id"]))
    return files


def wishlist_note(sku: str) -> str:
    return f"Remember to buy {sku}."


def order_note(order_id: str) -> str:
    return f"Order {order_id} is no longer needed."


def redraw_notes(base_state: dict, seed: int, world_index: int) -> dict:
    """A copy of `base_state` in which every wishlist note names another product and every order note another
    order, drawn from the stream of training world `w<world_index>` (AppsWorldConfig.world_redraw "notes"):
    the same paths, records and names, so that only reading a note tells what it names."""
    state = fresh_state(base_state)
    rng = random.Random(f"apps-notes-{seed}-w{world_index}")
    files = state["files"]
    for prefix, records, note in (("/notes/wishlist-", state["products"], wishlist_note),
                                  ("/notes/order-", state["orders"], order_note)):
        paths = sorted(path for path in files if path.startswith(prefix))
        for path, key in zip(paths, rng.sample(sorted(records), len(paths))):
            files[path]["content"] = note(key)
    return state


def generate_base_state(config: AppsWorldConfig, world_index: int = 0) -> dict:
    """The state every episode of this world starts from (deterministic in the config). world_index > 0: the
    state of training world `w<world_index>` (AppsWorldConfig.train_worlds), the same sizes with re-drawn
    records and its own names, or with config.names "shared" the names every world of every seed holds."""
    if config.names not in NAME_MODES:
        raise DataError(f"data.apps.names is {config.names!r}; valid: {', '.join(NAME_MODES)}")
    rng = random.Random(f"apps-state-{config.seed}" + (f"-w{world_index}" if world_index else ""))
    ids = random.Random(SHARED_IDENTITIES_STREAM) if config.names == "shared" else rng
    names = NonceNames(ids)
    contacts = _contacts(config, names, ids, rng)
    products = _products(config, names, ids, rng)
    orders = _orders(contacts, products, rng)
    events = _events(contacts, config, rng)
    return {
        "user": {"email": USER_EMAIL},
        "contacts": contacts,
        "events": events,
        "inbox": _inbox(contacts, rng),
        "sent": {},
        "files": _files(products, orders, rng),
        "products": products,
        "orders": orders,
        "counters": {"event": len(events), "sent": 0, "order": len(orders)},
    }


def fresh_state(base_state: dict) -> dict:
    """A private copy of the base state for one episode (a JSON round trip: the state is plain JSON, and this
    is several times faster than copy.deepcopy, which every episode and every verification pays)."""
    return json.loads(json.dumps(base_state))


__all__ = ["USER_EMAIL", "WORK_HOURS", "fresh_state", "generate_base_state", "redraw_notes"]
