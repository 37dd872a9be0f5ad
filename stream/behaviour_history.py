"""Recent behaviour kept from the stream itself for sequence models: each user's clicked items
(DIN, DIEN, YouTube DNN), or each item's interactions (item-based AutoRec).

An example is featurised with the clicks its user made *before* it was learned, and its own
click (if any) is added only after, so no label leaks into its own input. Bounded twice: the
last ``length`` items per user, and at most ``max_users`` users (the least recently active one is
forgotten first). The state is plain JSON and goes into every version with the joiner's, so a
resumed worker continues with the same histories.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Sequence
from typing import Any


class UserHistory:
    """The last ``length`` entries per key (a user, or an item), at most ``max_users`` keys, the least
    recently active forgotten first."""

    def __init__(self, length: int, max_users: int = 1_000_000) -> None:
        if length < 1 or max_users < 1:
            raise ValueError("length and max_users must be positive")
        self.length = length
        self.max_users = max_users
        self._users: OrderedDict[str, deque[Any]] = OrderedDict()  # entries: ids, or [item, value, ...]

    def of(self, users: Sequence[str]) -> list[list[Any]]:
        """The current history of each user (oldest first)."""
        get = self._users.get
        return [list(h) if (h := get(user)) is not None else [] for user in users]

    def add_clicks(self, users: Sequence[str], items: Sequence[Any], labels: Sequence[int]) -> None:
        """Record the clicked (label 1) items, in order."""
        self.add([u for u, label in zip(users, labels) if label], [i for i, label in zip(items, labels) if label])

    def add(self, users: Sequence[str], items: Sequence[Any]) -> None:
        """Record every pair, in order."""
        for user, item in zip(users, items):
            history = self._users.get(user)
            if history is None:
                history = self._users[user] = deque(maxlen=self.length)
                if len(self._users) > self.max_users:
                    self._users.popitem(last=False)
            else:
                self._users.move_to_end(user)
            history.append(item)

    def __len__(self) -> int:
        return len(self._users)

    def state(self) -> dict[str, Any]:
        return {"length": self.length, "max_users": self.max_users,
                "users": [[user, list(items)] for user, items in self._users.items()]}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> UserHistory:
        history = cls(state["length"], state["max_users"])
        for user, items in state["users"]:
            history._users[user] = deque(items, maxlen=history.length)
        return history


class BehaviourHistory:
    """What a model's spec asks for (``history_kind``): the user's clicked items, keyed by user,
    or the item's interactions, keyed by item: every user shown it, as ``u`` if they clicked and
    ``~u`` if not (the featurizer turns that into the user's row with a sign).
    ``before`` is read to featurise a batch, ``after`` records the batch once it has been learned."""

    def __init__(self, kind: str, length: int, max_keys: int = 1_000_000, fields: Sequence[str] = ()) -> None:
        self.kind = kind
        self.fields = tuple(fields)  # remembered with each clicked item: entries are [item, value, ...]
        self.store = UserHistory(length, max_keys)
        self._by_item = kind == "item_interactions"

    def before(self, users: Sequence[str], items: Sequence[str]) -> list[list[Any]]:
        """Each example's history as stored now (for scoring: nothing of the batch itself)."""
        return self.store.of(items if self._by_item else users)

    def before_learning(self, users: Sequence[str], items: Sequence[str], labels: Sequence[int],
                        features: Sequence[dict[str, Any]] | None = None) -> list[list[Any]]:
        """Each example's history in stream order while learning a batch: what is stored, plus
        what the batch's *earlier* examples add (their labels are known: they come before it in
        the stream). Without this, a user's clicks inside one batch would be invisible to their
        later impressions of the same batch, and the latest click is often the one that matters."""
        keys = items if self._by_item else users
        out = self.store.of(keys)
        pending: dict[str, list[Any]] = {}
        for k, (key, entry) in enumerate(zip(keys, self._entries(users, items, labels, features))):
            extra = pending.get(key)
            if extra:
                out[k] = out[k] + extra
            if entry is not None:
                pending.setdefault(key, []).append(entry)
        return out

    def after(self, users: Sequence[str], items: Sequence[str], labels: Sequence[int],
              features: Sequence[dict[str, Any]] | None = None) -> None:
        """Record a learned batch (in order)."""
        keys = items if self._by_item else users
        entries = self._entries(users, items, labels, features)
        self.store.add([k for k, e in zip(keys, entries) if e is not None], [e for e in entries if e is not None])

    def _entries(self, users: Sequence[str], items: Sequence[str], labels: Sequence[int],
                 features: Sequence[dict[str, Any]] | None) -> list[Any]:
        """What each example adds to its key's history (None: nothing, an impression not clicked)."""
        if self._by_item:
            return [u if label else f"~{u}" for u, label in zip(users, labels)]
        if self.fields and features is not None:
            return [[item, *(f.get(name) for name in self.fields)] if label else None
                    for item, f, label in zip(items, features, labels)]
        return [item if label else None for item, label in zip(items, labels)]

    def __len__(self) -> int:
        return len(self.store)

    def state(self) -> dict[str, Any]:
        return {**self.store.state(), "kind": self.kind, "fields": list(self.fields)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> BehaviourHistory:
        history = cls(state.get("kind", "user_clicks"), state["length"], state["max_users"], state.get("fields", ()))
        history.store = UserHistory.from_state(state)
        return history
