"""A synthetic Criteo-format stream with long-tailed ids, for measuring per-id state.

Real CTR logs have fields with millions of distinct values, most seen once or twice, and their
popular values change over days. Here every categorical field draws its values from a Zipf law
(``zipf`` close to 1) over ``values`` possible ones, each value with an effect of its own on the
click logit, so a model must learn the popular values' effects while the tail, which carries
almost no evidence, competes for the same memory. With ``churn`` the popular values move: the
value at each popularity rank is replaced by a new one ``churn`` times over the stream, as trends
come and go (a model's memory of the old ones is then dead weight).

Columns follow Criteo (label, I1..I13, C1..C26; ``C1`` is the user, ``C2`` the item), the true
click probability is known (``<out>.oracle.json``), and nothing but numpy is used, so millions of
rows are generated in seconds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from streamrec.producers.generator import GeneratedStream
from streamrec.stream.hashing import hash_uniform, mix64


@dataclass(frozen=True)
class LongTailSettings:
    """How the long-tail stream is drawn: values per field, the Zipf exponent, how much each
    value's effect weighs, and how often the popular values are replaced (``churn``)."""

    values: int = 2_000_000   # possible values of the widest field; the others have fewer
    zipf: float = 1.05        # popularity ~ rank^-zipf
    fields: int = 10          # long-tail categorical fields (C1 user, C2 item, then C3...)
    effect: float = 0.5       # std of a value's effect on the logit, before the field's weight
    churn: float = 0.0        # times the values at every popularity rank are replaced over the stream
    ctr: float = 0.2


def _zipf_ranks(rng: np.random.Generator, size: int, n: int, exponent: float) -> np.ndarray:
    """Ranks 0..n-1 with P(rank k) ~ (k + 1)^-exponent (inverse of the continuous CDF)."""
    u = rng.random(size)
    if abs(exponent - 1.0) < 1e-9:
        ranks = np.exp(u * np.log(n + 1.0)) - 1.0
    else:
        a = 1.0 - exponent
        ranks = (1.0 + u * ((n + 1.0) ** a - 1.0)) ** (1.0 / a) - 1.0
    return np.minimum(ranks.astype(np.int64), n - 1)


def generate_long_tail(rows: int, seed: int = 0, settings: LongTailSettings | None = None) -> GeneratedStream:
    """``rows`` rows of the long-tail stream (module docstring)."""
    settings = settings or LongTailSettings()
    if rows < 1 or settings.fields < 2 or settings.fields > 26:
        raise ValueError("rows must be positive and fields between 2 and 26")
    rng = np.random.default_rng(seed)
    progress = np.arange(rows) / max(rows - 1, 1)
    logit = np.zeros(rows)
    cats: list[np.ndarray] = []
    for f in range(26):
        if f >= settings.fields:  # the rest of Criteo's columns: a few values, no effect
            cats.append(np.char.mod("%x", rng.integers(0, 4, rows)).astype(object))
            continue
        n = max(100, int(settings.values / 2 ** (f * 0.8)))  # 2M, 1.1M, 660k, ... down to a few thousand
        ranks = _zipf_ranks(rng, rows, n, settings.zipf)
        # churn: each rank's value is replaced at its own phase, ``churn`` times over the stream
        era = np.floor(settings.churn * progress + hash_uniform(ranks + f * 7919)).astype(np.int64)
        value = ranks + (era * n if settings.churn else 0)
        salt = np.int64(f + 1) << np.int64(48)
        u1, u2 = hash_uniform(value ^ salt), hash_uniform(value ^ (salt + 1))
        effect = np.sqrt(-2 * np.log(u1)) * np.cos(2 * np.pi * u2)
        weight = settings.effect * (1.0 if f < 2 else 0.8 ** (f - 1))
        logit += weight * effect
        cats.append(np.char.mod("%x", mix64(value ^ salt) >> np.uint64(20)).astype(object))
    ints = np.empty((rows, 13), dtype=np.int64)
    for j in range(13):
        ints[:, j] = np.round(rng.lognormal(1.0, 1.0, rows)).astype(np.int64)
    logit += 0.2 * np.log1p(ints[:, 0]) - 0.2 * np.log1p(ints[:, 1])
    lo, hi = -10.0, 10.0
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if (1 / (1 + np.exp(-(logit + mid)))).mean() < settings.ctr else (lo, mid)
    probabilities = 1 / (1 + np.exp(-(logit + (lo + hi) / 2)))
    labels = (rng.random(rows) < probabilities).astype(np.int8)
    return GeneratedStream(labels, probabilities, ints, cats, settings={"kind": "long_tail", **asdict(settings)})
