"""The order in which training questions are handed to the rollout actors: a seeded, resumable cursor.

Each epoch is a fresh permutation of the training split drawn from `seed` and the epoch number, so the
order depends only on (seed, epoch, position) and a restored cursor continues exactly where the saved
one stopped. Questions handed out but never turned into training data (in flight on an actor that died,
or still waiting in the buffer at checkpoint time) are `requeue`d: they come out first on the next
`take`, before the permutation continues, so no question is silently skipped.

    cursor = DataCursor(num_items=len(questions), seed=0)
    indices = cursor.take(4)          # e.g. [17, 3, 41, 8]
    cursor.requeue([3])               # actor died: question 3 comes back first
    state = cursor.state_dict()       # JSON-friendly; DataCursor.from_state_dict(state) continues exactly
"""

from __future__ import annotations

import random


class DataCursor:
    """Infinite stream of indices into the training split, reshuffled each epoch."""

    def __init__(self, num_items: int, seed: int = 0):
        if num_items < 1:
            raise ValueError("the training split is empty: the rollout manager needs at least one question")
        self.num_items = num_items
        self.seed = seed
        self.epoch = 0
        self.position = 0  # next index into the current epoch's permutation
        self.requeued: list[int] = []
        self._permutation = self._epoch_permutation(0)

    def _epoch_permutation(self, epoch: int) -> list[int]:
        order = list(range(self.num_items))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def take(self, count: int) -> list[int]:
        """The next `count` question indices (re-queued ones first)."""
        taken = self.requeued[:count]
        self.requeued = self.requeued[count:]
        while len(taken) < count:
            if self.position == self.num_items:
                self.epoch += 1
                self.position = 0
                self._permutation = self._epoch_permutation(self.epoch)
            taken.append(self._permutation[self.position])
            self.position += 1
        return taken

    def requeue(self, indices: list[int]) -> None:
        """Hand these indices out again before anything else (oldest re-queued first)."""
        for index in indices:
            if not 0 <= index < self.num_items:
                raise ValueError(f"cannot requeue question index {index}: the split has {self.num_items} questions")
        self.requeued.extend(indices)

    def state_dict(self, extra_requeued: list[int] | None = None) -> dict:
        """JSON-friendly state; `extra_requeued` adds indices handed out but not trained on yet."""
        return {
            "num_items": self.num_items,
            "seed": self.seed,
            "epoch": self.epoch,
            "position": self.position,
            "requeued": list(self.requeued) + list(extra_requeued or []),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["num_items"] != self.num_items:
            raise ValueError(
                f"the saved data cursor covers {state['num_items']} training questions but this run has "
                f"{self.num_items}; resume with the same data settings (data.*) as the saved run"
            )
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self.requeued = [int(index) for index in state["requeued"]]
        self._permutation = self._epoch_permutation(self.epoch)

    @classmethod
    def from_state_dict(cls, state: dict) -> "DataCursor":
        cursor = cls(num_items=int(state["num_items"]), seed=int(state["seed"]))
        cursor.load_state_dict(state)
        return cursor


__all__ = ["DataCursor"]
