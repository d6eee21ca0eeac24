"""The one place where a rollout's environment is assembled: retriever + tools + protocol.

Every process that plays episodes (the Ray rollout actors, the SFT expert, eval, the benchmarks) gets
its protocol and tool executor from `build_environment`, so they all agree on the tool schemas the
protocol renders into the prompt and on the tools a turn's calls reach.

    environment = build_environment(config.rollout, config.tools, config.retriever, corpus_path="world/corpus.jsonl")
    groups = run_episodes(engine, environment.protocol, environment.executor, questions, group_size, config.rollout)
"""

from __future__ import annotations

from dataclasses import dataclass

from data.config import RetrieverConfig
from data.retriever import Retriever, build_retriever
from rollouts.config import RolloutConfig, ToolsConfig
from rollouts.protocols import AgentProtocol, build_protocol
from rollouts.tools import ToolExecutor, build_tools


@dataclass
class Environment:
    """What an episode acts on: the protocol that renders prompts and parses actions, and the tools."""

    protocol: AgentProtocol
    executor: ToolExecutor


def build_environment(
    rollout: RolloutConfig,
    tools: ToolsConfig,
    retriever: RetrieverConfig,
    corpus_path: str | None = None,
    documents: list[dict] | None = None,
    retriever_instance: Retriever | None = None,
) -> Environment:
    """The configured tools over a retriever (built from `documents` or `corpus_path` unless given) and the
    configured protocol, which renders exactly those tools' schemas."""
    if retriever_instance is None and "search" in tools.enabled:
        retriever_instance = build_retriever(retriever, documents=documents, corpus_path=corpus_path or None)
    executor = build_tools(tools, retriever, retriever_instance)
    protocol = build_protocol(rollout.protocol, prompt_style=rollout.prompt_style, tool_schemas=executor.tool_schemas())
    return Environment(protocol=protocol, executor=executor)


__all__ = ["Environment", "build_environment"]
