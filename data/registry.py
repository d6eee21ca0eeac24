"""Name registries: every extension point of the project (rewards, tools, protocols, engines, retriever
backends, dataset mappers, advantage estimators, benchmark suites, ...) is a `Registry`.

A registry is a dict from name to entry, filled by a decorator that refuses duplicates: two modules
silently fighting over one name is a bug that only shows up as a wrong curve. Looking up a name nobody
registered raises a KeyError that lists the registered names. The registered-name check of a config
(rl/app/registries.py) reads the same registries, so an extension registered with its decorator is
selectable from YAML at once.
It lives in `data`, the bottom package, so that every other package can use it.

    ENGINES: Registry[type[InferenceEngine]] = Registry("inference engine")

    @ENGINES.register("hf")
    class HFEngine(InferenceEngine): ...

    ENGINES["hf"]          # the class; ENGINES["nope"] -> KeyError: unknown inference engine 'nope'; registered: hf
    ENGINES.names()        # ["hf"]
"""

from __future__ import annotations

from typing import Callable, TypeVar

Entry = TypeVar("Entry")


class Registry(dict[str, Entry]):
    """name -> entry; `add`/`register` refuse duplicates, a missing name raises a KeyError naming the valid ones.

    It is a plain dict otherwise (iteration, `in`, `len`, `dict.get` with a default), so tests can
    patch an entry with `monkeypatch.setitem`.
    """

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def add(self, name: str, entry: Entry) -> Entry:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} needs a non-empty string name, got {name!r}")
        if name in self:
            existing = self[name]
            owner = existing if isinstance(existing, str) else getattr(existing, "__module__", "?")
            raise ValueError(f"{self.kind} {name!r} is already registered (by {owner}); pick another name")
        self[name] = entry
        return entry

    def register(self, *names: str) -> Callable[[Entry], Entry]:
        """Decorator: register the decorated entry under each of `names`."""
        if not names:
            raise ValueError(f"register a {self.kind} under at least one name")

        def decorator(entry: Entry) -> Entry:
            for name in names:
                self.add(name, entry)
            return entry

        return decorator

    def names(self) -> list[str]:
        return sorted(self)

    def __missing__(self, name: str) -> Entry:
        raise KeyError(f"unknown {self.kind} {name!r}; registered: {', '.join(self.names()) or '(none)'}")


__all__ = ["Registry"]
