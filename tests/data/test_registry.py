"""The generic name registry behind every extension point: duplicates refused, misses name the valid names."""

from __future__ import annotations

import pytest

from data.registry import Registry


def test_register_adds_under_every_name_and_lookups_work_like_a_dict():
    readers = Registry("row reader")

    @readers.register(".jsonl", ".json")
    def read_jsonl(path):
        return path

    assert readers[".json"] is read_jsonl and readers[".jsonl"] is read_jsonl
    assert readers.names() == [".json", ".jsonl"] and len(readers) == 2 and ".json" in readers
    assert readers.get(".csv") is None  # plain dict.get: a default, no error


def test_a_duplicate_name_is_refused_naming_the_owner():
    tools = Registry("tool")
    tools.add("search", test_a_duplicate_name_is_refused_naming_the_owner)
    with pytest.raises(ValueError, match=rf"tool 'search' is already registered \(by {__name__}\)"):
        tools.add("search", len)
    assert tools["search"] is test_a_duplicate_name_is_refused_naming_the_owner  # the first one stays
    with pytest.raises(ValueError, match="non-empty string name"):
        tools.add("", len)
    with pytest.raises(ValueError, match="at least one name"):
        tools.register()


def test_a_missing_name_lists_the_registered_ones():
    engines = Registry("inference engine")
    with pytest.raises(KeyError, match=r"unknown inference engine 'hf'; registered: \(none\)"):
        engines["hf"]
    engines.add("vllm", object())
    engines.add("hf", object())
    with pytest.raises(KeyError, match="unknown inference engine 'sglang'; registered: hf, vllm"):
        engines["sglang"]


def test_tests_can_patch_an_entry(monkeypatch):
    suites = Registry("benchmark suite")
    suites.add("tools", "rl.bench.tools")
    monkeypatch.setitem(suites, "tools", "tests.fake")
    monkeypatch.setitem(suites, "extra", "tests.extra")
    assert suites["tools"] == "tests.fake"
    monkeypatch.undo()
    assert dict(suites) == {"tools": "rl.bench.tools"}
