"""A synthetic Criteo-format stream whose true click probability is known.

Every row's click is drawn from ``p = sigmoid(logit)``, where the logit sums

* first-order effects of several categorical fields and of a few integer fields,
* feature crosses (``C5 x C6`` and ``C7 x item category``) that a linear model over single
  fields cannot represent,
* user interest: each user has a sparse (Dirichlet) interest profile over item categories, so a
  user clicks items of their favourite categories far more often,
* interest that moves: a user's impressions come in sessions of about ``SESSION_LENGTH``, each
  with a focus category (drawn from their profile, or at random) whose items they click more
  during it, and of which they are shown more (as a recommender following them would); only the
  user's recent clicks reveal the current focus, which is what sequence models (DIN, DIEN) can
  read and an id embedding cannot,
* drift: the effects of ``C4`` rotate slowly over the stream,
* new ids: users and items keep arriving, and new items are the popular ones.

Columns follow Criteo: label, ``I1..I13``, ``C1..C26``. ``C1`` is the user, ``C2`` the item,
``C3`` the item's category (replay with ``--user-field C1 --item-field C2``). Because ``p`` is
known, the oracle AUC (AUC of ``p`` itself against the drawn labels) bounds what any model
can reach on the file; it is written beside it as ``<out>.oracle.json``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamrec.stream.quality_metrics import exact_auc

N_CATEGORIES = 24
# (cardinality, effect scale) for C4..C26; scale 0 fields are pure noise.
CONTEXT_FIELDS = [
    (7, 0.5), (12, 0.4), (40, 0.4), (4, 0.3), (100, 0.5), (300, 0.4), (1000, 0.3), (3000, 0.3),
    (10000, 0.2), (20, 0.0), (500, 0.0), (5000, 0.0), (3, 0.2), (60, 0.3), (200, 0.2), (8, 0.0),
    (15, 0.3), (2000, 0.0), (30, 0.2), (400, 0.0), (9, 0.1), (80, 0.0), (50000, 0.0),
]
TARGET_CTR = 0.22
SESSION_LENGTH = 12      # a user's impressions per session, on average
SESSION_BOOST = 1.5      # logit added to items of the session's focus category
SESSION_EXPLORE = 0.5    # share of sessions whose focus ignores the user's profile
SESSION_SHOWN = 0.4      # share of impressions drawn from the session's focus category


@dataclass(frozen=True)
class GeneratedStream:
    """A synthetic stream's rows with the true click probability of each, and its summary."""

    labels: np.ndarray          # (rows,) int8
    probabilities: np.ndarray   # (rows,) float64, the true click probability
    ints: np.ndarray            # (rows, 13) int64, -1 = missing
    cats: list[np.ndarray]      # 26 arrays of hex strings, "" = missing
    # the true probability without what only behaviour reveals (producers/behaviour_generator.py)
    blind_probabilities: np.ndarray | None = None
    settings: dict[str, object] | None = None  # how it was generated, when not the default stream

    @property
    def oracle_auc(self) -> float:
        return exact_auc(self.probabilities, self.labels)

    @property
    def blind_auc(self) -> float | None:
        """The best AUC without the user's behaviour (None where the stream does not define it)."""
        return None if self.blind_probabilities is None else exact_auc(self.blind_probabilities, self.labels)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _zipf_index(rng: np.random.Generator, size: int, n: int, skew: float = 1.6) -> np.ndarray:
    return np.minimum((n * rng.random(size) ** skew).astype(np.int64), n - 1)


def _vocab(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.array([f"{v:08x}" for v in rng.integers(0, 2**32, n)], dtype=object)


def _session_focus(rng: np.random.Generator, user: np.ndarray, interests: np.ndarray) -> np.ndarray:
    """Each row's focus category: the user's impressions, in stream order, are cut into sessions
    of geometric length (mean SESSION_LENGTH), each with one focus."""
    order = np.argsort(user, kind="stable")
    sorted_users = user[order]
    first = np.r_[True, sorted_users[1:] != sorted_users[:-1]]
    # a new session at a user's first impression, then with probability 1/SESSION_LENGTH
    new_session = first | (rng.random(len(user)) < 1.0 / SESSION_LENGTH)
    session_sorted = np.cumsum(new_session) - 1
    session_user = sorted_users[new_session]
    profile = interests[session_user].cumsum(axis=1)
    from_profile = (profile < rng.random((len(session_user), 1)) * profile[:, -1:]).sum(axis=1)
    focus = np.where(rng.random(len(session_user)) < SESSION_EXPLORE,
                     rng.integers(0, interests.shape[1], len(session_user)), from_profile)
    out = np.empty(len(user), dtype=np.int64)
    out[order] = focus[session_sorted]
    return out


def _newest_of_category(rng: np.random.Generator, category: np.ndarray, progress: np.ndarray, born: np.ndarray,
                        item_category: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Per row an item of ``category`` already born at the row's time, recent ones more likely
    (as in the main draw); ``fallback`` where the category has none yet."""
    out = fallback.copy()
    for c in range(N_CATEGORIES):
        rows = np.flatnonzero(category == c)
        members = np.flatnonzero(item_category == c)  # born is sorted, so these are in birth order
        if not len(rows) or not len(members):
            continue
        available = np.searchsorted(born[members], progress[rows], side="right")
        pick = available - 1 - np.minimum((available * rng.random(len(rows)) ** 2.0).astype(np.int64),
                                          np.maximum(available - 1, 0))
        ok = available > 0
        out[rows[ok]] = members[pick[ok]]
    return out


def generate(rows: int, seed: int = 0) -> GeneratedStream:
    if rows < 1:
        raise ValueError("rows must be positive")
    rng = np.random.default_rng(seed)
    progress = np.arange(rows) / max(rows - 1, 1)  # 0..1 over the stream

    # Users arrive over time: the active pool grows from 20% to 100% of all users.
    n_users = max(200, rows // 25)
    pool = np.maximum(1, (n_users * (0.2 + 0.8 * progress)).astype(np.int64))
    user = np.minimum((pool * rng.random(rows) ** 1.3).astype(np.int64), pool - 1)
    interests = rng.dirichlet(np.full(N_CATEGORIES, 0.25), size=n_users)
    activity = rng.lognormal(0.0, 1.0, n_users)

    # Items are born over time; recently born items are the popular ones.
    n_items = max(100, rows // 150)
    born = np.sort(np.where(rng.random(n_items) < 0.3, 0.0, rng.random(n_items) * 0.9))
    available = np.maximum(1, np.searchsorted(born, progress, side="right"))
    item = available - 1 - np.minimum((available * rng.random(rows) ** 2.0).astype(np.int64), available - 1)
    item_category = rng.integers(0, N_CATEGORIES, n_items)
    item_quality = rng.normal(0.0, 0.5, n_items)
    # Like a recommender following the user: part of each session's impressions come from its focus.
    focus = _session_focus(rng, user, interests)
    shown = rng.random(rows) < SESSION_SHOWN
    item = np.where(shown, _newest_of_category(rng, focus, progress, born, item_category, item), item)
    category = item_category[item]

    logit = item_quality[item].copy()
    logit += 0.9 * np.log(interests[user, category] * N_CATEGORIES + 0.08)
    logit += SESSION_BOOST * (category == focus)

    context = []
    for k, (card, scale) in enumerate(CONTEXT_FIELDS):
        values = _zipf_index(rng, rows, card)
        context.append(values)
        if scale == 0.0:
            continue
        if k == 0:  # C4 drifts: its effects rotate by a quarter turn over the stream
            a, b = rng.normal(0, scale * 1.5, card), rng.normal(0, scale * 1.5, card)
            angle = progress * np.pi / 2
            logit += np.cos(angle) * a[values] + np.sin(angle) * b[values]
        else:
            logit += rng.normal(0, scale, card)[values]
    c5, c6, c7 = context[1], context[2], context[3]
    logit += rng.normal(0, 0.7, (CONTEXT_FIELDS[1][0], CONTEXT_FIELDS[2][0]))[c5, c6]
    logit += rng.normal(0, 0.6, (CONTEXT_FIELDS[3][0], N_CATEGORIES))[c7, category]

    ints = np.empty((rows, 13), dtype=np.int64)
    ints[:, 0] = np.round(activity[user] * 3).astype(np.int64)               # I1: user activity
    ints[:, 1] = rng.poisson(2.0, rows)                                       # I2: ad position
    for j in range(2, 13):
        ints[:, j] = np.round(rng.lognormal(1.0 + 0.2 * j, 1.0, rows)).astype(np.int64)
    logit += 0.35 * np.log1p(ints[:, 0]) - 0.3 * ints[:, 1] + 0.15 * np.log1p(ints[:, 4]) - 0.1 * np.log1p(ints[:, 7])
    for j, missing_rate in enumerate([0.0, 0.05, 0.2, 0.1, 0.3, 0.0, 0.4, 0.1, 0.0, 0.6, 0.2, 0.8, 0.1]):
        if missing_rate:
            ints[rng.random(rows) < missing_rate, j] = -1

    # Shift the bias so the stream has a realistic click-through rate.
    lo, hi = -10.0, 10.0
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _sigmoid(logit + mid).mean() < TARGET_CTR else (lo, mid)
    probabilities = _sigmoid(logit + (lo + hi) / 2)
    labels = (rng.random(rows) < probabilities).astype(np.int8)

    cats = [_vocab(rng, n_users)[user], _vocab(rng, n_items)[item], _vocab(rng, N_CATEGORIES)[category]]
    for (card, _scale), values in zip(CONTEXT_FIELDS, context):
        column = _vocab(rng, card)[values]
        cats.append(column)
    for j in (14, 20, 24):  # a few sparse fields with missing values, as in Criteo
        cats[j] = np.where(rng.random(rows) < 0.3, "", cats[j])
    return GeneratedStream(labels, probabilities, ints, cats)


def criteo_lines(stream: GeneratedStream) -> Iterator[str]:
    int_text = np.where(stream.ints < 0, "", stream.ints.astype(str))
    columns = [stream.labels.astype(str), *int_text.T, *stream.cats]
    for row in zip(*(c.tolist() for c in columns)):
        yield "\t".join(row) + "\n"


def write_stream(stream: GeneratedStream, out: Path, seed: int) -> dict[str, object]:
    """Write the Criteo TSV and ``<out>.oracle.json``; return the oracle summary."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as handle:
        handle.writelines(criteo_lines(stream))
    p, y = stream.probabilities, stream.labels
    summary = {
        "rows": int(len(y)),
        "seed": seed,
        "oracle_auc": stream.oracle_auc,
        "oracle_logloss": float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p))),
        "positive_rate": float(y.mean()),
        "format": "criteo",
        "user_field": "C1",
        "item_field": "C2",
    }
    if stream.blind_probabilities is not None:
        summary["blind_auc"] = stream.blind_auc
        summary["history_field"] = "C3"
    if stream.settings is not None:
        summary["settings"] = stream.settings
    oracle_path(out).write_text(json.dumps(summary, indent=2))
    return summary


def oracle_path(out: Path) -> Path:
    return out.with_name(out.name + ".oracle.json")
