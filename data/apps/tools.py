"""The apps' tools: plain functions over one episode's state dict, each with a JSON schema of its arguments.

Twenty typed tools over six apps (data/apps/state.py describes the state):

- contacts: contacts_search, contacts_get, contacts_update
- calendar: calendar_list_events, calendar_free_hours, calendar_create_event, calendar_delete_event
- mail: mail_list_inbox, mail_read, mail_send
- files: files_list, files_read, files_write, files_delete
- shop: shop_search, shop_get_product, shop_place_order, shop_get_order, shop_cancel_order
- calculator: calculator_sum (stateless: the arithmetic an agent hands to a tool rather than do in its head)

A tool is `function(state, **arguments) -> JSON value`; the read-only ones never change the state, the
others (`mutates=True`) change it in place. A request the app cannot honour (an unknown id, a busy hour,
too little stock) raises `AppError` with a message for the model. `call_app_tool` validates the arguments
against the tool's schema first, so a tool body only sees well-typed arguments. The MCP server
(data/apps/server.py) serves exactly these tools; the task generator and the verifier call them
directly to compute gold answers and gold end states.

What it simplifies on purpose: searches are case-insensitive substring matches; ids of created records
come from per-kind counters in the state, so replaying the same calls gives the same ids.

    result = call_app_tool(state, "calendar_free_hours", {"email": "ana.pell@mailo.example", "day": 2})
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import jsonschema

from data.apps.state import USER_EMAIL, WORK_HOURS
from data.registry import Registry


class AppError(ValueError):
    """A request the app refuses (unknown id, busy hour, no stock, bad arguments); its text is shown to the model."""


@dataclass(frozen=True)
class AppTool:
    name: str
    description: str
    parameters: dict  # JSON schema of the arguments object
    function: Callable[..., Any]  # function(state, **arguments) -> JSON-serialisable result
    mutates: bool  # whether the tool can change the state

    def schema(self) -> dict:
        """The OpenAI / HF chat-template description of the tool."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}


APP_TOOLS: Registry[AppTool] = Registry("app tool")
_VALIDATORS: dict[str, jsonschema.Draft202012Validator] = {}

STRING = {"type": "string", "minLength": 1}
DAY = {"type": "integer", "minimum": 1, "description": "calendar day number, from 1"}
HOUR = {"type": "integer", "minimum": WORK_HOURS[0], "maximum": WORK_HOURS[-1],
        "description": "start hour of a one-hour slot (9 to 16)"}


def app_tool(name: str, description: str, properties: dict, required: tuple[str, ...] | None = None,
             mutates: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register `function(state, **arguments)` as the app tool `name` with an object schema of `properties`
    (all of them required unless `required` names the required ones)."""
    parameters = {"type": "object", "properties": properties,
                  "required": list(properties) if required is None else list(required),
                  "additionalProperties": False}

    def decorator(function: Callable[..., Any]) -> Callable[..., Any]:
        APP_TOOLS.add(name, AppTool(name, description, parameters, function, mutates))
        _VALIDATORS[name] = jsonschema.Draft202012Validator(parameters)
        return function

    return decorator


def call_app_tool(state: dict, name: str, arguments: dict) -> Any:
    """Run one tool on `state`; raises AppError for an unknown tool, bad arguments or a refused request."""
    if name not in APP_TOOLS:
        raise AppError(f"unknown tool {name!r}; available tools: {', '.join(APP_TOOLS.names())}")
    if not isinstance(arguments, dict):
        raise AppError(f"arguments of {name} must be a JSON object, got {type(arguments).__name__}")
    problem = jsonschema.exceptions.best_match(_VALIDATORS[name].iter_errors(arguments))
    if problem is not None:
        raise AppError(f"bad arguments for {name}: {problem.message}")
    return APP_TOOLS[name].function(state, **arguments)


def app_tool_schemas() -> list[dict]:
    return [APP_TOOLS[name].schema() for name in APP_TOOLS.names()]


def _next_id(state: dict, kind: str, prefix: str, width: int) -> str:
    state["counters"][kind] += 1
    return f"{prefix}{state['counters'][kind]:0{width}d}"


def _lookup(collection: dict, key: str, what: str) -> dict:
    if key not in collection:
        raise AppError(f"no {what} {key!r}")
    return collection[key]


def _known_email(state: dict, email: str) -> None:
    if email != USER_EMAIL and all(contact["email"] != email for contact in state["contacts"].values()):
        raise AppError(f"no contact with email {email!r}")


# ----------------------------------------------------------------------------------------------
# contacts
# ----------------------------------------------------------------------------------------------


@app_tool("contacts_search", "Find contacts whose name or email contains the text; returns id, name, email, "
          "phone, city.", {"text": {**STRING, "description": "full or partial name or email"}})
def contacts_search(state: dict, text: str) -> list[dict]:
    needle = text.strip().lower()
    return [dict(contact) for contact in state["contacts"].values()
            if needle in contact["name"].lower() or needle in contact["email"]]


@app_tool("contacts_get", "One contact by id.", {"contact_id": STRING})
def contacts_get(state: dict, contact_id: str) -> dict:
    return dict(_lookup(state["contacts"], contact_id, "contact"))


@app_tool("contacts_update", "Change a contact's phone number and/or city; returns the updated contact.",
          {"contact_id": STRING, "phone": STRING, "city": STRING}, required=("contact_id",), mutates=True)
def contacts_update(state: dict, contact_id: str, phone: str | None = None, city: str | None = None) -> dict:
    contact = _lookup(state["contacts"], contact_id, "contact")
    if phone is None and city is None:
        raise AppError("contacts_update needs a phone or a city to change")
    if phone is not None:
        contact["phone"] = phone
    if city is not None:
        contact["city"] = city
    return dict(contact)


# ----------------------------------------------------------------------------------------------
# calendar
# ----------------------------------------------------------------------------------------------


def _events_of(state: dict, email: str, day: int) -> list[dict]:
    return sorted((event for event in state["events"].values()
                   if event["day"] == day and email in event["attendees"]), key=lambda event: event["hour"])


@app_tool("calendar_list_events", "The events of one person (by email) on one day, by start hour.",
          {"email": STRING, "day": DAY})
def calendar_list_events(state: dict, email: str, day: int) -> list[dict]:
    _known_email(state, email)
    return [dict(event) for event in _events_of(state, email, day)]


@app_tool("calendar_free_hours", "The start hours (9 to 16) of one person's free one-hour slots on one day.",
          {"email": STRING, "day": DAY})
def calendar_free_hours(state: dict, email: str, day: int) -> list[int]:
    _known_email(state, email)
    busy = {event["hour"] for event in _events_of(state, email, day)}
    return [hour for hour in WORK_HOURS if hour not in busy]


@app_tool("calendar_create_event", "Create a one-hour event; every attendee (emails) must be free then.",
          {"title": STRING, "day": DAY, "hour": HOUR,
           "attendees": {"type": "array", "items": STRING, "minItems": 1, "uniqueItems": True}}, mutates=True)
def calendar_create_event(state: dict, title: str, day: int, hour: int, attendees: list[str]) -> dict:
    for email in attendees:
        _known_email(state, email)
        if any(event["hour"] == hour for event in _events_of(state, email, day)):
            raise AppError(f"{email} is busy on day {day} at {hour}")
    event_id = _next_id(state, "event", "ev", 4)
    state["events"][event_id] = {"id": event_id, "title": title, "day": day, "hour": hour,
                                 "attendees": list(attendees)}
    return dict(state["events"][event_id])


@app_tool("calendar_delete_event", "Delete an event by id.", {"event_id": STRING}, mutates=True)
def calendar_delete_event(state: dict, event_id: str) -> dict:
    _lookup(state["events"], event_id, "event")
    return {"deleted": state["events"].pop(event_id)["id"]}


# ----------------------------------------------------------------------------------------------
# mail
# ----------------------------------------------------------------------------------------------


@app_tool("mail_list_inbox", "Messages in the inbox (id, from, subject), optionally only those from one email.",
          {"from_email": STRING}, required=())
def mail_list_inbox(state: dict, from_email: str | None = None) -> list[dict]:
    return [{"id": message["id"], "from": message["from"], "subject": message["subject"]}
            for message in state["inbox"].values() if from_email is None or message["from"] == from_email]


@app_tool("mail_read", "One inbox message by id, with its body.", {"message_id": STRING})
def mail_read(state: dict, message_id: str) -> dict:
    return dict(_lookup(state["inbox"], message_id, "message"))


@app_tool("mail_send", "Send an email to one contact (by email address).",
          {"to": STRING, "subject": STRING, "body": STRING}, mutates=True)
def mail_send(state: dict, to: str, subject: str, body: str) -> dict:
    _known_email(state, to)
    message_id = _next_id(state, "sent", "s", 3)
    state["sent"][message_id] = {"id": message_id, "to": to, "subject": subject, "body": body}
    return {"sent": message_id}


# ----------------------------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------------------------


@app_tool("files_list", "Paths of the files in a folder (e.g. /docs), recursively.", {"folder": STRING})
def files_list(state: dict, folder: str) -> list[str]:
    prefix = folder.rstrip("/") + "/"
    return sorted(path for path in state["files"] if path.startswith(prefix))


@app_tool("files_read", "The text of a file.", {"path": STRING})
def files_read(state: dict, path: str) -> str:
    return _lookup(state["files"], path, "file")["content"]


@app_tool("files_write", "Create or overwrite a file with the text.", {"path": STRING, "content": STRING},
          mutates=True)
def files_write(state: dict, path: str, content: str) -> dict:
    if not path.startswith("/"):
        raise AppError(f"file paths are absolute (start with /), got {path!r}")
    state["files"][path] = {"path": path, "content": content}
    return {"written": path, "chars": len(content)}


@app_tool("files_delete", "Delete a file.", {"path": STRING}, mutates=True)
def files_delete(state: dict, path: str) -> dict:
    _lookup(state["files"], path, "file")
    del state["files"][path]
    return {"deleted": path}


# ----------------------------------------------------------------------------------------------
# shop
# ----------------------------------------------------------------------------------------------


@app_tool("shop_search", "Products whose name contains the text (sku, name, price, stock).", {"query": STRING})
def shop_search(state: dict, query: str) -> list[dict]:
    needle = query.strip().lower()
    return [dict(product) for product in state["products"].values() if needle in product["name"].lower()]


@app_tool("shop_get_product", "One product by SKU: name, price and units in stock.", {"sku": STRING})
def shop_get_product(state: dict, sku: str) -> dict:
    return dict(_lookup(state["products"], sku, "product"))


@app_tool("shop_place_order", "Order units of a product shipped to an email; returns the order with its total.",
          {"sku": STRING, "quantity": {"type": "integer", "minimum": 1}, "ship_to": STRING}, mutates=True)
def shop_place_order(state: dict, sku: str, quantity: int, ship_to: str) -> dict:
    product = _lookup(state["products"], sku, "product")
    _known_email(state, ship_to)
    if product["stock"] < quantity:
        raise AppError(f"only {product['stock']} units of {sku} in stock")
    product["stock"] -= quantity
    order_id = _next_id(state, "order", "o", 4)
    state["orders"][order_id] = {"id": order_id, "sku": sku, "quantity": quantity, "ship_to": ship_to,
                                 "total": product["price"] * quantity, "status": "placed"}
    return dict(state["orders"][order_id])


@app_tool("shop_get_order", "One order by id.", {"order_id": STRING})
def shop_get_order(state: dict, order_id: str) -> dict:
    return dict(_lookup(state["orders"], order_id, "order"))


@app_tool("shop_cancel_order", "Cancel a placed order; its units go back in stock; returns the refund.",
          {"order_id": STRING}, mutates=True)
def shop_cancel_order(state: dict, order_id: str) -> dict:
    order = _lookup(state["orders"], order_id, "order")
    if order["status"] != "placed":
        raise AppError(f"order {order_id} is {order['status']}, not placed")
    order["status"] = "cancelled"
    state["products"][order["sku"]]["stock"] += order["quantity"]
    return {"cancelled": order_id, "refund": order["total"]}


# ----------------------------------------------------------------------------------------------
# calculator
# ----------------------------------------------------------------------------------------------


@app_tool("calculator_sum", "The sum of a list of integers.",
          {"numbers": {"type": "array", "items": {"type": "integer"}, "minItems": 1}})
def calculator_sum(state: dict, numbers: list[int]) -> dict:
    return {"sum": sum(numbers)}


__all__ = ["APP_TOOLS", "AppError", "AppTool", "app_tool", "app_tool_schemas", "call_app_tool"]
