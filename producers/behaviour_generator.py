"""A synthetic behaviour stream: clicks follow the categories of each user's last clicks.

Sequence models (DIN, DIEN) exist for streams where what a user just clicked predicts the next
click far better than who the user is. This generator makes such streams with settings of its own,
so a model can be measured on streams it was not tuned on:

* each impression shows user ``u`` a candidate item; with probability ``recent_share`` the item
  is drawn from the category of one of ``u``'s last ``history_length`` clicks (a recommender
  following recent interest), else from all items by popularity;
* the click's logit is a static part (user, item and context effects, a weak user x category
  taste) plus the *sequence term* ``match_strength * sum_k recency_decay**k * [category of the
  candidate == category of the k-th most recent click]`` over the last ``history_length`` clicks;
* the user's history is updated with each click as the stream goes, so the sequence term depends
  on the clicks drawn before, in stream order.

Because both parts are known, two bounds are written beside the file: the oracle AUC (the true
probability against the labels) and the history-blind AUC (the true logit without its sequence
term: the best a model that ignores behaviour can rank). ``(AUC - blind) / (oracle - blind)`` is
the share of the reachable gap a model captured. Columns follow Criteo: label, ``I1..I13``,
``C1`` user, ``C2`` item, ``C3`` the item's category, ``C4..C9`` context (replay or evaluate with
``--user-field C1 --item-field C2``, sequence models with ``--history-field C3``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass

import numpy as np

from streamrec.producers.generator import GeneratedStream, _vocab, _zipf_index


@dataclass(frozen=True)
class BehaviourSettings:
    """What shapes a behaviour stream (``streamrec generate --behaviour ...``)."""

    match_strength: float = 2.0   # logit of a match with the most recent click's category
    recency_decay: float = 0.7    # weight of the k-th most recent click: recency_decay ** k
    history_length: int = 5       # how many recent clicks the truth looks at
    recent_share: float = 0.3     # share of candidates drawn from the categories of recent clicks
    categories: int = 40
    users_per_row: float = 1 / 60  # users in the stream per row (300k rows: 5,000 users)
    items_per_row: float = 1 / 100
    base_logit: float = -2.5

    def check(self) -> None:
        if not 0 <= self.recent_share <= 1 or not 0 <= self.recency_decay <= 1:
            raise ValueError("recent_share and recency_decay must lie in [0, 1]")
        if self.history_length < 1 or self.categories < 2:
            raise ValueError("history_length must be >= 1 and categories >= 2")


# (cardinality, effect scale) of the context fields C4..C9
CONTEXT = [(7, 0.4), (30, 0.3), (200, 0.3), (1000, 0.2), (12, 0.0), (5000, 0.0)]


def generate_behaviour(rows: int, seed: int = 0, settings: BehaviourSettings | None = None) -> GeneratedStream:
    """``rows`` impressions in stream order with their true and history-blind click probabilities."""
    settings = settings or BehaviourSettings()
    settings.check()
    if rows < 1:
        raise ValueError("rows must be positive")
    rng = np.random.default_rng(seed)
    n_users = max(50, int(rows * settings.users_per_row))
    n_items = max(settings.categories * 4, int(rows * settings.items_per_row))
    n_cats = settings.categories

    user = _zipf_index(rng, rows, n_users, skew=1.4)
    item_category = rng.integers(0, n_cats, n_items)
    members = [np.flatnonzero(item_category == c) for c in range(n_cats)]
    popular = _zipf_index(rng, rows, n_items, skew=1.8)  # the global draw, by popularity
    user_bias = rng.normal(0.0, 0.4, n_users)
    item_quality = rng.normal(0.0, 0.5, n_items)
    taste = rng.normal(0.0, 0.3, (n_users, n_cats))  # a weak, fixed user x category taste

    static = settings.base_logit + user_bias[user]
    context = []
    for card, scale in CONTEXT:
        values = _zipf_index(rng, rows, card)
        context.append(values)
        if scale:
            static = static + rng.normal(0.0, scale, card)[values]

    weights = settings.recency_decay ** np.arange(settings.history_length)
    follow = rng.random(rows) < settings.recent_share
    pick_recent = rng.integers(0, settings.history_length, rows)
    pick_member = rng.random(rows)
    draws = rng.random(rows)
    item = np.empty(rows, dtype=np.int64)
    sequence = np.zeros(rows)
    labels = np.zeros(rows, dtype=np.int8)
    recent: list[deque[int]] = [deque(maxlen=settings.history_length) for _ in range(n_users)]
    for t in range(rows):
        clicks = recent[user[t]]
        if follow[t] and clicks:
            category = clicks[-1 - pick_recent[t] % len(clicks)]
            pool = members[category]
            chosen = int(pool[min(int(len(pool) * pick_member[t] ** 2.0), len(pool) - 1)])
        else:
            chosen = int(popular[t])
        item[t] = chosen
        category = int(item_category[chosen])
        # the k-th most recent click is clicks[-1 - k]
        term = 0.0
        for k in range(len(clicks)):
            if clicks[-1 - k] == category:
                term += weights[k]
        sequence[t] = settings.match_strength * term
        logit = static[t] + item_quality[chosen] + taste[user[t], category] + sequence[t]
        if draws[t] < 1.0 / (1.0 + np.exp(-logit)):
            labels[t] = 1
            clicks.append(category)
    blind_logit = static + item_quality[item] + taste[user, item_category[item]]
    probabilities = 1.0 / (1.0 + np.exp(-(blind_logit + sequence)))

    ints = np.empty((rows, 13), dtype=np.int64)
    ints[:, 0] = rng.poisson(3.0, rows)
    for j in range(1, 13):
        ints[:, j] = np.round(rng.lognormal(1.0, 1.0, rows)).astype(np.int64)
    cats = [_vocab(rng, n_users)[user], _vocab(rng, n_items)[item], _vocab(rng, n_cats)[item_category[item]]]
    for (card, _scale), values in zip(CONTEXT, context):
        cats.append(_vocab(rng, card)[values])
    while len(cats) < 26:  # the remaining Criteo columns are empty
        cats.append(np.full(rows, "", dtype=object))
    return GeneratedStream(labels, probabilities, ints, cats, blind_probabilities=1.0 / (1.0 + np.exp(-blind_logit)),
                           settings={"kind": "behaviour", **asdict(settings)})
