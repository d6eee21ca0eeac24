"""The one record that crosses every process boundary: a trajectory, its turns and tool calls.

A rollout actor builds Trajectory objects token by token (so the loss mask is exact, never recovered by
re-tokenising text), the reward functions score them, the buffer groups them, and the trainer turns a
list of them into padded tensors. They are plain dataclasses of python lists, cheap to pickle through
Ray's object store.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from data.types import Question


@dataclass
class ToolCall:
    """One call the model asked for, and what came back."""

    name: str  # tool name, e.g. "search"
    arguments: dict  # e.g. {"query": "..."}
    observation: str = ""  # text shown to the model (the result, or an error message)
    error: str | None = None  # set when the call failed or timed out
    latency_s: float = 0.0
    retrieved_doc_ids: list[str] = field(default_factory=list)  # for search: ids of returned documents
    episode_id: str = ""  # the episode whose state the call acts on (stateful tools, e.g. MCP servers); "": none
    # the corpus partition a search stays in: the question's metadata["corpus_partition"]; None: the whole corpus
    corpus_partition: str | None = None


@dataclass
class Turn:
    """One model call (generation round) and the tool calls parsed from it."""

    text: str  # the text the model generated in this round
    calls: list[ToolCall] = field(default_factory=list)
    answer: str | None = None  # set if this round gave the final answer
    invalid: bool = False  # the output followed no valid action (got a corrective observation)
    generate_s: float = 0.0
    tools_s: float = 0.0
    policy_version: int | None = None  # weights that generated this turn (set by the concurrent agent loop)
    batch_rows: int = 0  # rows of the engine batch this turn was generated in (merged calls included)


@dataclass
class Trajectory:
    """A whole episode: prompt, the interleaved response (model tokens and observation tokens), masks.

    response_ids / loss_mask / behaviour_logprobs have the same length; loss_mask is 1 on tokens the
    policy generated and 0 on tool observations and other injected text; behaviour_logprobs are the
    sampling log-probs of generated tokens (0.0 where loss_mask is 0).
    """

    question: Question
    prompt_ids: list[int]
    response_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    behaviour_logprobs: list[float] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)
    response_text: str = ""  # decoded response (model text and observations), for rewards and logs
    final_answer: str | None = None
    protocol: str = "tags"  # agent protocol that wrote the response (rollout.protocol); rewards parse with it
    # names of the tools the episode could call (tools.enabled); the rewards' grammar accepts calls to these
    tool_names: list[str] = field(default_factory=lambda: ["search"])
    truncated: bool = False  # hit max_context_tokens or max_turns without an answer
    policy_version: int = 0  # version of the weights that generated it (the oldest, if its turns span two)
    group_id: str = ""  # trajectories of one question sampled together share a group id
    episode_id: str = ""  # unique per trajectory; its tool calls carry it (stateful tools keep one state per episode)
    # {tool source name: the episode's state when it ended}, from the stateful tool sources (the apps MCP server);
    # the agent loop records it so the rewards and eval can verify the end state. {}: no stateful source.
    episode_states: dict = field(default_factory=dict)
    reward: float = 0.0
    reward_components: dict[str, float] = field(default_factory=dict)
    generate_s: float = 0.0
    tools_s: float = 0.0

    @property
    def model_calls(self) -> int:
        return len(self.turns)

    @property
    def tool_calls(self) -> int:
        return sum(len(turn.calls) for turn in self.turns)

    @property
    def search_rounds(self) -> int:
        return sum(1 for turn in self.turns if turn.calls)

    @property
    def num_generated_tokens(self) -> int:
        return sum(self.loss_mask)

    def append(self, token_ids: list[int], trainable: bool, logprobs: list[float] | None = None) -> None:
        """Append tokens to the response; the mask is built here and nowhere else."""
        if trainable and (logprobs is None or len(logprobs) != len(token_ids)):
            raise ValueError("generated tokens need one behaviour log-prob each")
        self.response_ids.extend(token_ids)
        self.loss_mask.extend([1 if trainable else 0] * len(token_ids))
        self.behaviour_logprobs.extend(logprobs if trainable else [0.0] * len(token_ids))


@dataclass
class Group:
    """G trajectories of one question: the unit the buffer admits.

    policy_version is the oldest version among its trajectories' tokens (one version unless new weights
    were loaded between the turns of a concurrent call, see rollouts/batcher.py).
    """

    group_id: str
    question: Question
    trajectories: list[Trajectory]
    policy_version: int
    worker_id: int = -1
    generate_s: float = 0.0
    node_id: str = ""  # the Ray node of the actor that generated it ("" outside Ray)
