"""A trainer's example source in a version, whether one worker or many ranks wrote it.

One trainer stores its source's state (a :class:`~streamrec.consumers.joiner.Joiner` or an
:class:`~streamrec.consumers.example_queue.ExampleQueue`) as it is. A trainer that runs as ranks
(consumers/rank_trainer.py) stores every rank's, each with the partitions it read::

    {"kind": "ranks", "ranks": [{"partitions": [0, 2], "state": {...}}, {"partitions": [1, 3], ...}]}

Whoever resumes, with any number of ranks, gets the per-partition state of the partitions it
reads; the first rank (or the one worker) also gets every example that was waiting to be trained
and the join's counts, so each example is trained once and counted once.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from streamrec.consumers.example_queue import ExampleQueue
from streamrec.consumers.example_source import ExampleSource
from streamrec.consumers.joiner import Joiner

RANKS_KIND = "ranks"


def _one(state: dict[str, Any]) -> ExampleSource:
    return ExampleQueue.from_state(state) if state.get("kind") == ExampleQueue.kind else Joiner.from_state(state)


def source_kind(state: dict[str, Any]) -> str:
    """``joiner`` or ``examples``: what the trainer(s) that wrote ``state`` read."""
    if state.get("kind") == RANKS_KIND:
        kinds = {source_kind(part["state"]) for part in state["ranks"]}
        if len(kinds) != 1:
            raise ValueError(f"ranks of one version read different sources: {sorted(kinds)}")
        return kinds.pop()
    return ExampleQueue.kind if state.get("kind") == ExampleQueue.kind else Joiner.kind


def source_from_state(state: dict[str, Any], partitions: Iterable[int] | None = None,
                      lead: bool = True) -> ExampleSource:
    """The source of a reader of ``partitions`` (None: all of them) resuming from ``state``; the
    ``lead`` reader also takes the examples waiting to be trained and the counts."""
    parts = [part["state"] for part in state["ranks"]] if state.get("kind") == RANKS_KIND else [state]
    sources = [_one(part) for part in parts]
    if len(sources) == 1 and partitions is None and lead:
        return sources[0]
    wanted = None if partitions is None else set(partitions)
    out = sources[0].empty_like()
    for source in sources:
        out.absorb(source, wanted, lead)
    return out


def ranks_state(parts: list[tuple[list[int], dict[str, Any]]]) -> dict[str, Any]:
    """One version's source state from each rank's (its partitions, its source's state)."""
    return {"kind": RANKS_KIND, "ranks": [{"partitions": sorted(p), "state": s} for p, s in parts]}


__all__ = ["RANKS_KIND", "ranks_state", "source_from_state", "source_kind"]
