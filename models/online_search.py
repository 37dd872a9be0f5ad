"""Online search over a model's settings, wide crosses and count features, while the stream flows.

A user with a new stream should not have to run a hyper-parameter study. This module runs one
while the model learns, in the spirit of ChaCha (Wu et al., "ChaCha for Online AutoML", ICML
2021: a champion and a few challengers that each differ from it by one change, judged online on
the same examples) and AutoCross (Luo et al., KDD 2019: crosses proposed from cheap statistics of
a sample):

* **Candidates from the stream's own examples.** After ``sample`` examples, and again after 4 and
  16 times as many (``rounds``), candidates are proposed from every example so far (each already
  predicted and learned, so choosing from them leaks nothing into the progressive metrics). Every
  pair of fields is scored by how much memorising its values' click rates (prequential: each from
  the earlier examples with the same pair) lowers the logloss below its two fields taken
  additively; count features are chosen greedily, each key (a many-valued field or a candidate
  cross) by how much its own click rate adds to those chosen before (the signal a count feature
  carries, models/seen_counts.py). Early rounds find what shows at once, later ones what needs
  repeats to show (a user x item pair). After the rounds, candidates are proposed again every
  ``later_every`` examples from the latest ones, so an interaction that appears when the stream
  changes is found too (those start warm: nothing is kept from the start to catch up on).
* **One spec for everyone.** The model is rebuilt on a spec holding every candidate (its state
  carried over exactly, :func:`widen`), with the candidates switched off (``ftrl.ignored``). All
  members then share one featurized batch; a member reads the columns its configuration uses.
* **Challengers fork from the champion.** A challenger is a copy of the champion with one change
  (switch on the proposed crosses, the count features, one cross, FTRL's ``alpha`` x3 or /3,
  its L1 and L2 together x3 or /3, the embedding rate x2 or /2, the network's batch /4 or x4:
  :func:`learn_in_steps`), so it starts warm: from the
  fork on, the two differ only by that change, and their per-example loglosses on the same
  examples are a paired comparison.
* **Promotion on evidence.** A challenger that has seen ``judge_after`` examples since its fork
  and whose mean logloss is lower by ``z`` standard errors becomes the champion (of two caught-up
  siblings that both win, the one with fewer changes, the other then challenging it); one clearly
  worse, or not better after ``give_up_after``, is dropped and its change is not proposed again
  until the stream is twice as long (after a second failure four times, ...; one still ahead at
  ``give_up_after`` keeps its place while no other change waits for it). At most ``live`` members learn at once,
  the champion included, and the examples all members learn stay within ``budget`` times the
  stream's: a proposal round's catch-up may overdraw it, and is paid back before the next round.

The champion's predictions are the search's: they feed the metrics, and the champion is the
model that is returned, saved, published and served.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from streamrec.models import replace_setting
from streamrec.models.base import OnlineModel
from streamrec.models.ftrl import FTRLProximal
from streamrec.models.keyed_rows import count_layout, wide_layout
from streamrec.models.seen_counts import SeenCounts
from streamrec.models.wide_inputs import wide_columns, wide_keys
from streamrec.stream.errors import ConfigError
from streamrec.stream.feature_spec import COUNT_LEVELS, FeatureSpec
from streamrec.stream.featurizer import Featurizer
from streamrec.stream.quality_metrics import StreamingMetrics, logloss_terms
from streamrec.stream.sparse_batch import SparseBatch


@dataclass(frozen=True)
class SearchSettings:
    """How the online search spends its budget; see the module docstring."""

    live: int = 3                  # members learning at once, the champion included (the compute budget)
    sample: int = 3_000            # examples whose statistics propose the first candidate crosses and counts
    rounds: int = 3                # proposals: after sample, 4 x sample, 16 x sample examples, each from all so far
    crosses: int = 8               # candidate crosses proposed per round, best first
    counts: int = 4                # candidate count features proposed per round
    judge_after: int = 2_000       # examples since its fork before a challenger may be promoted or dropped
    give_up_after: int = 30_000    # ... and after which it is dropped if it is not better
    z: float = 3.0                 # standard errors of the paired logloss difference a promotion needs
    budget: float = 3.0            # examples all members learn (catch-up included) per example of the stream, at most
    later_every: int = 48_000      # after the rounds, candidates every so many examples, from the latest (0: never)
    change_z: float = 4.0          # the champion's normalized entropy over its latest examples this many standard
    #                                errors above as many before: the stream changed (0: never looked for)

    def __post_init__(self) -> None:
        if not self.budget >= 1:
            raise ConfigError(f"search.budget must be >= 1 (times one model's learning), got {self.budget}")
        for name in ("live", "sample", "rounds", "judge_after", "give_up_after"):
            if getattr(self, name) < 1:
                raise ConfigError(f"search.{name} must be >= 1, got {getattr(self, name)}")
        if self.change_z < 0:
            raise ConfigError(f"search.change_z must be >= 0 (0: changes are not looked for), got {self.change_z}")
        if self.later_every < 0:
            raise ConfigError(f"search.later_every must be >= 0 (0: no proposals after the rounds), "
                              f"got {self.later_every}")
        if self.give_up_after < self.judge_after:
            raise ConfigError("search.give_up_after must be >= search.judge_after")


STEPS = "batch.steps"  # a move's change of how many steps a member learns each shared batch in
MAX_STEPS = 4          # ... at most: a step costs the network about as much at any batch size
CHANGE_SCALES = (1, 4)  # windows of `sample` examples whose normalized entropy is compared with as many before
MEMBER_WINDOW = 2_000  # examples in a member's window AUC (the reports show its lifetime AUC)
SCORED_ROWS = 50_000   # the latest examples a proposal scores (the counts are filled from all)
PAIR_FIELDS = 12       # fields whose pairs a proposal after the first scores

# ---------------------------------------------------------------------------- candidates


def _prequential_rates(keys: np.ndarray, labels: np.ndarray, prior: np.ndarray, strength: float = 5.0) -> np.ndarray:
    """Each example's click rate estimated from the *earlier* examples with its key, shrunk to its
    ``prior``: what memorising the key would have predicted online (a key seen for the first time
    predicts the prior, so a key that never recurs gains nothing)."""
    order = np.argsort(keys, kind="stable")  # grouped by key, stream order inside a group
    group, y = keys[order], labels[order]
    position = np.arange(len(group))
    starts = np.maximum.accumulate(np.where(np.r_[True, group[1:] != group[:-1]], position, 0))
    total = np.cumsum(y)
    seen_before = position - starts
    clicks_before = total - y - (total[starts] - y[starts])
    rates = np.empty(len(keys))
    rates[order] = (clicks_before + strength * prior[order]) / (seen_before + strength)
    return np.clip(rates, 1e-6, 1 - 1e-6)


def _logit(p: np.ndarray | float) -> np.ndarray:
    return np.log(p) - np.log1p(-np.asarray(p))


def _combined(p: np.ndarray, q: np.ndarray, prior: float) -> np.ndarray:
    """Two click-rate estimates taken additively in logit space, over their shared prior."""
    return np.clip(1 / (1 + np.exp(-(_logit(p) + _logit(q) - _logit(prior)))), 1e-6, 1 - 1e-6)


def _mean_logloss(p: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


@dataclass
class Candidates:
    """Crosses and count features proposed from a sample, best first, with their scores."""

    crosses: list[tuple[str, str]] = field(default_factory=list)
    counts: list[str] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)


def propose(spec: FeatureSpec, ids: np.ndarray, labels: np.ndarray, settings: SearchSettings,
            pair_fields: int | None = None) -> Candidates:
    """Candidate crosses and count features from a sample's field ids (N, F) and labels (N,), its
    latest ``SCORED_ROWS`` at most. With ``pair_fields``, only pairs among the user, the item and
    that many fields whose own click rates tell most are scored (every pair costs a sort)."""
    ids, labels = ids[-SCORED_ROWS:], labels[-SCORED_ROWS:].astype(np.float64)
    prior = float(np.clip(labels.mean(), 1e-4, 1 - 1e-4)) if len(labels) else 0.5
    out = Candidates()
    if len(labels) < 100 or labels.min() == labels.max():
        return out
    names = spec.names
    flat = np.full(len(labels), prior)
    rates = [_prequential_rates(ids[:, j], labels, flat) for j in range(len(names))]
    telling = sorted(range(len(names)), key=lambda j: _mean_logloss(rates[j], labels))
    # the user and the item are always scored: their pairs are what memorising needs, while
    # their own click rates tell little until their values recur
    scored = set(telling[:pair_fields]) | {0, 1} if pair_fields else set(range(len(names)))
    existing = {frozenset(c) for c in spec.crosses}
    pairs = []
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            if frozenset((names[a], names[b])) in existing or a not in scored or b not in scored:
                continue
            # what the cross adds to its two fields taken additively (as a linear model takes them)
            additive = _combined(rates[a], rates[b], prior)
            joint = _prequential_rates(spec.pair_keys(ids[:, a], ids[:, b]), labels, additive)
            gain = _mean_logloss(additive, labels) - _mean_logloss(joint, labels)
            if gain > 0:
                pairs.append((gain, a, b))
    pairs.sort(key=lambda pair: (pair[0], names[pair[1]], names[pair[2]]), reverse=True)
    for gain, a, b in pairs[:settings.crosses]:
        out.crosses.append((names[a], names[b]))
        out.scores[f"{names[a]}:{names[b]}"] = gain
    # a count feature carries its key's own click rate: worth it where that rate tells something
    # and the key has many values (a field of a few values is learned by its weights alone).
    # Chosen greedily, each by what it adds to those chosen before (taken additively, as the
    # linear part takes them), so five near-copies of one key do not crowd out another.
    keyed = {name: rates[j] for j, name in enumerate(names)
             if name not in spec.counts and len(np.unique(ids[:, j])) >= 20}
    for _gain, a, b in pairs[:settings.crosses]:
        keyed[f"{names[a]}:{names[b]}"] = _prequential_rates(spec.pair_keys(ids[:, a], ids[:, b]), labels, flat)
    current = flat
    while keyed and len(out.counts) < settings.counts:
        loss = _mean_logloss(current, labels)
        gains = {key: loss - _mean_logloss(_combined(current, rate, prior), labels) for key, rate in keyed.items()}
        key = max(gains, key=gains.get)
        if gains[key] <= 0:
            break
        out.counts.append(key)
        out.scores[f"count:{key}"] = gains[key]
        current = _combined(current, keyed.pop(key), prior)
    return out


# ---------------------------------------------------------------------------- models

_crossing: dict[int, tuple[FeatureSpec, Featurizer]] = {}  # by the spec's id; the spec kept alive with it


def batch_for(model: OnlineModel, batch: SparseBatch) -> SparseBatch:
    """``batch`` with the cross columns of ``model``'s spec: a worker featurizes with the spec it
    started with, while the search widens its models' specs with the crosses it proposes (cross
    ids are a function of the field ids alone, so they are computed here for any spec). A batch
    with as many cross columns as the model has crosses is taken as it is: along one model's
    versions each spec extends the one before it, so equal counts mean equal crosses."""
    if batch.cross_ids.shape[1] == len(model.spec.crosses):
        return batch
    kept = _crossing.get(id(model.spec))
    if kept is None or kept[0] is not model.spec:
        if len(_crossing) > 8:
            _crossing.clear()
        kept = _crossing[id(model.spec)] = (model.spec, Featurizer(model.spec))
    return kept[1].recross(batch)



def learn_in_steps(model: OnlineModel, batch: SparseBatch, steps: int) -> np.ndarray:
    """``model`` learning ``batch`` in ``steps`` consecutive parts, as if the stream came in
    batches that much smaller; the predictions of each part are made before it is learned (and
    after the parts before it), so they stay progressive. Members share one featurized batch:
    this is how one of them learns with a smaller batch than the others."""
    if steps <= 1 or len(batch) < 2:
        return model.learn(batch)
    bounds = np.linspace(0, len(batch), min(steps, len(batch)) + 1).astype(int)
    return np.concatenate([model.learn(batch.rows(int(a), int(b))) for a, b in zip(bounds, bounds[1:]) if b > a])


def widen(model: OnlineModel, spec: FeatureSpec, seen_so_far: SparseBatch | None = None) -> OnlineModel:
    """``model`` rebuilt on ``spec``: the same fields, ``model.spec``'s crosses and counts first and
    more after them. Every weight, optimiser state and count is carried over; the new crosses
    start at zero, and the new count features at zero or, given every labelled example the model
    has learned (``seen_so_far``), at exactly the counts they would have had from the start."""
    old = model.spec
    if spec.fields != old.fields or spec.crosses[:len(old.crosses)] != old.crosses \
            or spec.counts[:len(old.counts)] != old.counts:
        raise ConfigError("widen: the new spec must extend the model's own")
    config = model.config
    if hasattr(config, "ftrl"):
        config = dataclasses.replace(config, ftrl=dataclasses.replace(
            config.ftrl, ignored=tuple(config.ftrl.ignored) + tuple(k for k in wide_keys(spec)
                                                                   if k not in wide_keys(old))))
    # Only the wide part and the count tables depend on the crosses and counts: the rest (the
    # embeddings, the network, their optimiser state) is copied as it is, and those two are
    # rebuilt at the new sizes with the old coordinates moved to where the new layout has them.
    wide, seen = getattr(model, "wide", None), getattr(model, "seen", None)
    wider = copy.deepcopy(model, {id(wide): None, id(seen): None})
    wider.spec, wider.config = spec, config
    if wide is not None and wide.table is not None:
        # keyed: the rows stay where they are; the count and bias coordinates' keys move with the layout
        grown = copy.deepcopy(wide)
        grown.config = config.ftrl
        keys = grown.table.keys
        counted = (keys >= old.count_offset) & (keys < old.bias_id)
        keys[counted] += spec.count_offset - old.count_offset
        keys[keys == old.bias_id] = spec.bias_id
        _config, grown.table.regions, grown.table.always_from, grown.table.max_rows = wide_layout(spec, config.tables)
        grown.table.reindex()
        wider.wide = grown
        wider.wide_columns = wide_columns(spec, config.ftrl.ignored)
    elif wide is not None:
        grown = FTRLProximal(spec.wide_rows, config.ftrl)
        crossed, counted = old.count_offset, len(old.counts) * COUNT_LEVELS**2
        for name in ("z", "n", "dirty"):
            before, after = getattr(wide, name), getattr(grown, name)
            after[:crossed] = before[:crossed]
            after[spec.count_offset:spec.count_offset + counted] = before[crossed:crossed + counted]
            after[-1] = before[-1]
        wider.wide = grown
        wider.wide_columns = wide_columns(spec, config.ftrl.ignored)
    if spec.counts and wide is not None:
        counts = SeenCounts(spec, config.tables)
        if seen is not None and seen.table is not None:
            # keyed: the same rows and keys; the table gains the new count keys' regions
            for name in ("count", "clicks", "dirty"):
                setattr(counts, name, getattr(seen, name).clone())
            table = copy.deepcopy(seen.table, {id(seen): counts})
            table.config, table.regions, table.always_from, table.max_rows = count_layout(spec, config.tables)
            counts.table = table
        if seen_so_far is not None:  # every example learned so far: the new keys' counts are exact
            counts.recount_from(seen_so_far, len(old.counts))
        if seen is not None and seen.table is None:  # the old keys come first, and keep the counts they have
            for name in ("count", "clicks", "dirty"):
                getattr(counts, name)[:len(seen.count)] = getattr(seen, name)
        if seen is not None:
            counts.shared = seen.shared
        wider.seen = counts
    return wider


def retune(model: OnlineModel, changes: dict[str, Any]) -> OnlineModel:
    """A copy of ``model`` whose settings (dotted keys: ``ftrl.alpha``, ``embedding.lr``,
    ``ftrl.ignored``) are changed from now on; its state is the same. Count tables marked
    ``shared`` are not copied: the copy reads the same ones."""
    seen = getattr(model, "seen", None)
    twin = copy.deepcopy(model, {id(seen): seen} if seen is not None and seen.shared else {})
    return _configured(twin, _changed(twin.config, changes))


def _changed(config: Any, changes: dict[str, Any]) -> Any:
    """``config`` with ``changes`` (dotted keys) made; the steps a member learns a batch in
    (``STEPS``) are how the search feeds the model, not one of its settings."""
    for key, value in changes.items():
        if key != STEPS:
            config = replace_setting(config, key, value)
    return config


def _configured(model: OnlineModel, config: Any) -> OnlineModel:
    """``model`` learning with ``config`` from now on: its parts that keep their own copy of a
    section (the wide part, the embeddings) are given the new one."""
    model.config = config
    wide = getattr(model, "wide", None)
    if wide is not None:
        wide.reconfigure(config.ftrl)  # the weights stay as they are; only how they learn changes
        model.wide_columns = wide_columns(model.spec, config.ftrl.ignored)
    embedding = getattr(model, "embedding", None)
    if embedding is not None and hasattr(config, "embedding"):
        embedding.config = config.embedding
    return model


def _setting(config: Any, key: str) -> Any:
    for part in key.split("."):
        config = getattr(config, part)
    return config


def configuration_of(spec: FeatureSpec, config: Any) -> dict[str, Any]:
    """What a model learns with, as the flags that would pin it: the crosses and count features it
    reads (not those it ignores) and the settings the search moves."""
    ignored = set(getattr(getattr(config, "ftrl", None), "ignored", ()))
    crosses = [f"{a}:{b}" for a, b in spec.crosses if f"{a}:{b}" not in ignored]
    counts = [k for k in spec.counts if f"count:{k}" not in ignored]
    settings = {}
    for key in ("ftrl.alpha", "ftrl.l1", "ftrl.l2", "embedding.lr"):
        try:
            settings[key] = _setting(config, key)
        except AttributeError:
            continue
    return {"crosses": crosses, "counts": counts, "settings": settings}


# ---------------------------------------------------------------------------- the search


@dataclass(frozen=True)
class Move:
    """One change a challenger makes to the champion's configuration."""

    name: str                 # e.g. "+crosses", "+cross user_id:item_id", "ftrl.alpha x3"
    changes: dict[str, Any]   # dotted settings → new values


@dataclass
class Member:
    """A challenger: the champion's copy with one move, and its paired evidence since the fork."""

    move: Move
    model: OnlineModel
    caught_up: int = 0        # kept examples it learned before it joined (0: a warm copy), among seen
    steps: int = 1            # steps it learns each shared batch in (learn_in_steps)
    seen: int = 0
    looks: int = 0            # times judged
    diff_sum: float = 0.0     # sum of (challenger - champion) per-example logloss
    diff_squares: float = 0.0
    # progressive AUC since the fork, the challenger's and the champion's on the same examples
    metrics: StreamingMetrics = field(default_factory=lambda: StreamingMetrics(MEMBER_WINDOW))
    champion_metrics: StreamingMetrics = field(default_factory=lambda: StreamingMetrics(MEMBER_WINDOW))
    # a caught-up member's own predictions and the labels, so that a sibling promoted before it
    # can take the champion's place in its evidence (None: not kept)
    predictions: list[tuple[np.ndarray, np.ndarray]] | None = None

    def record(self, predicted: np.ndarray, champion: np.ndarray, labels: np.ndarray) -> None:
        """Its and the champion's predictions of the same examples, made before either learned them."""
        if self.predictions is not None:
            self.predictions.append((predicted, labels))
        self.metrics.update(predicted, labels)
        self.champion_metrics.update(champion, labels)
        diff = logloss_terms(predicted, labels) - logloss_terms(champion, labels)
        self.seen += len(diff)
        self.diff_sum += float(diff.sum())
        self.diff_squares += float((diff * diff).sum())

    def summary(self) -> dict[str, Any]:
        return {"move": self.move.name, "examples": self.seen, "caught_up": self.caught_up,
                "logloss_change": self.mean, "z": self.z,
                "auc": self.metrics.auc, "champion_auc": self.champion_metrics.auc}

    @property
    def mean(self) -> float:
        return self.diff_sum / self.seen if self.seen else 0.0

    @property
    def z(self) -> float:
        """How many standard errors the challenger's logloss is *below* the champion's."""
        if self.seen < 2:
            return 0.0
        variance = max(self.diff_squares / self.seen - self.mean**2, 1e-18)
        return -self.mean / math.sqrt(variance / self.seen)


def _makes_fewer_changes(member: Member, other: Member) -> bool:
    """Whether ``member``'s changes are some of ``other``'s, and not all (it is ``other`` without
    one of its changes)."""
    mine, theirs = member.move.changes, other.move.changes
    return len(mine) < len(theirs) and all(k in theirs and theirs[k] == v for k, v in mine.items())


def _against(member: Member, promoted: Member) -> Member | None:
    """``member`` as a challenger of the newly promoted ``promoted``, where that is exact: both
    caught up on the same examples, and ``member`` makes every change ``promoted`` makes and more
    (``+crosses+counts, ftrl.alpha x3`` after ``+crosses+counts``). Its move becomes the rest, and
    its evidence is re-paired against ``promoted``'s predictions of the same examples. Any other
    member is a copy of the old champion and is dropped (None)."""
    if member is promoted or member.predictions is None or promoted.predictions is None:
        return None
    shared = promoted.move.changes
    if any(k not in member.move.changes or member.move.changes[k] != v for k, v in shared.items()):
        return None
    rest = {k: v for k, v in member.move.changes.items() if k not in shared}
    if not rest or len(member.predictions) != len(promoted.predictions):
        return None
    name = member.move.name.removeprefix(promoted.move.name + ", ")
    out = Member(Move(name, rest), member.model, caught_up=member.caught_up, steps=member.steps, predictions=[])
    for (mine, labels), (theirs, _) in zip(member.predictions, promoted.predictions):
        out.record(mine, theirs, labels)
    return out


class OnlineSearch:
    """A champion model and up to ``live - 1`` challengers learning from the same batches; see the
    module docstring. Drives like a model: :meth:`learn` returns the champion's predictions made
    before the step."""

    def __init__(self, model: OnlineModel, settings: SearchSettings = SearchSettings(), fresh: bool = True) -> None:
        """``fresh``: ``model`` has learned nothing yet, so the sample is every example it learned."""
        self.champion = model
        self.steps = 1  # the champion learns each batch in this many steps
        self.fresh = fresh
        # an untrained copy, from which a challenger with new candidates catches up on every example
        # kept (only crosses and counts are proposed, and only a wide part reads them)
        self._initial = copy.deepcopy(model) if fresh and getattr(model, "wide", None) is not None else None
        self._share_counts()
        self.settings = settings
        self.examples = 0
        self.challengers: list[Member] = []
        self.candidates: Candidates | None = None
        self.adopted: list[str] = []
        self.promotions: list[dict[str, Any]] = []
        self.dropped: list[dict[str, Any]] = []
        self._failed: dict[str, int] = {}       # move → times dropped
        self._retry_at: dict[str, int] = {}     # move → examples before it is tried again
        self._kept: list[tuple[SparseBatch, np.ndarray]] = []  # every batch learned, with the champion's
        # predictions made before learning it, until the last round
        self._rounds_left = settings.rounds      # proposals still to come, at sample, 4 x sample, ...
        self._next_round = settings.sample
        # after the rounds: proposals from the latest examples (ids and labels, at most SCORED_ROWS)
        self._next_later = settings.sample * 4 ** (settings.rounds - 1) + settings.later_every
        self._recent: list[tuple[np.ndarray, np.ndarray]] = []
        # the champion's per-example logloss: [examples, sum, sum of squares, clicks], this window
        # of `sample` examples and the latest complete ones
        self._window = np.zeros(4)
        self._windows: list[np.ndarray] = []
        self.changes: list[int] = []            # where the stream was seen to change
        self._member_examples = 0               # examples learned, summed over members (compute)
        self._champion_cpu = 0.0                # CPU seconds the champion's own learning took ...
        self._challenger_cpu = 0.0              # ... the challengers' (their catch-up included) ...
        self._search_cpu = 0.0                  # ... and everything the search did besides the champion's
        self._mark = 0.0                        # CPU time up to which _search_cpu counts

    @property
    def spec(self) -> FeatureSpec:
        return self.champion.spec

    def _share_counts(self) -> None:
        """Every member reads the champion's count tables, counted once per batch by the search."""
        seen = getattr(self.champion, "seen", None)
        if seen is not None:
            seen.shared = True

    # -------------------------------------------------------------- learning

    def learn(self, batch: SparseBatch) -> np.ndarray:
        assert batch.labels is not None, "learn needs labels"
        started = time.process_time()
        batch = batch_for(self.champion, batch)
        labels = batch.labels.numpy().astype(np.float64)
        champion = learn_in_steps(self.champion, batch, self.steps)
        self._mark = time.process_time()
        self._champion_cpu += self._mark - started
        self._member_examples += len(batch) * (1 + len(self.challengers))
        if self.challengers:
            for member in self.challengers:
                member.record(learn_in_steps(member.model, batch, member.steps), champion, labels)
            self._challenger_cpu += time.process_time() - self._mark
        seen = getattr(self.champion, "seen", None)
        if seen is not None and seen.shared:  # after every member read the counts before this batch
            seen.record_shared(batch)
        self.examples += len(batch)
        if self._rounds_left:
            self._sample(batch, champion)
        elif self.settings.later_every:
            self._sample_later(batch)
        if self.settings.change_z and not self._rounds_left:
            self._watch_for_change(logloss_terms(champion, labels), labels)
        if self.candidates is not None:
            self._judge()
            self._fill()
        self._count_search_cpu()
        return champion

    def _count_search_cpu(self) -> None:
        now = time.process_time()
        self._search_cpu += now - self._mark
        self._mark = now

    @property
    def learning_multiple(self) -> float:
        """CPU time of every member's learning (catch-up included) over the champion's alone."""
        return (self._champion_cpu + self._challenger_cpu) / self._champion_cpu if self._champion_cpu > 0 else 1.0

    @property
    def cpu_multiple(self) -> float:
        """CPU time of the whole search (proposals and copies too) over the champion's learning alone."""
        return (self._champion_cpu + self._search_cpu) / self._champion_cpu if self._champion_cpu > 0 else 1.0

    def _within_budget(self) -> bool:
        # counted in examples learned, not CPU seconds: the members are copies of one model, and
        # the search's choices must not depend on how busy the machine is (seeded runs repeat)
        return self.compute_multiple < self.settings.budget

    def _catch_up_affordable(self, examples: int) -> bool:
        """Whether one more caught-up challenger of ``examples`` fits the budget over the stretch it
        serves: up to the next round (four times as long), with only the champion learning after it.
        A catch-up overdraws the budget at the moment it runs, and no warm challenger starts until
        the multiple is back under it (:meth:`_fill`), so it is paid back over that stretch. Judged
        at the moment alone, no second catch-up would ever fit beside running challengers, and the
        settings a stream rewards from its first example (FTRL's rate, whose effect builds up in
        every coordinate's history) would only ever be tried as warm forks, where little of their
        gain shows."""
        horizon = max(self._next_round, self.examples)
        spent = self._member_examples + examples + (horizon - self.examples)
        return spent <= self.settings.budget * horizon

    def _sample(self, batch: SparseBatch, predicted: np.ndarray) -> None:
        """Keep the batch and the champion's predictions; at the end of a round, propose candidates
        from every example kept and rebuild the champion with them."""
        self._kept.append((batch, predicted))
        if self.examples < self._next_round:
            return
        kept = self._kept
        ids = np.concatenate([b.ids.numpy() for b, _ in kept])
        labels = np.concatenate([b.labels.numpy() for b, _ in kept])
        self._rounds_left -= 1
        self._next_round *= 4
        if not self._rounds_left:
            self._kept = []
        first = self.candidates is None
        found = propose(self.spec, ids, labels, self.settings, None if first else PAIR_FIELDS)
        if getattr(self.champion, "wide", None) is None:  # crosses and counts are the wide part's inputs
            found.crosses, found.counts = [], []
        if found.crosses or found.counts:
            # the samples hold every example learned so far: the new counts start exact
            self._adopt_candidates(found, ids, labels, recount=self.fresh)
            if self._initial is not None:
                self._initial = widen(self._initial, self.spec)
                self._catch_up(kept)
        elif self.candidates is None:
            self.candidates = found  # none: the judging starts all the same
        if not self._rounds_left:
            self._initial = None

    def _watch_for_change(self, losses: np.ndarray, labels: np.ndarray) -> None:
        """Compare the champion's normalized entropy (mean logloss over the entropy of the
        window's click rate, so that a click rate that moves is not taken for a change) over its
        latest ``sample`` examples with the ``sample`` before, and over its latest 4 x ``sample``
        with the 4 x ``sample`` before (a smaller change shows over more examples);
        ``change_z`` standard errors worse means the stream changed (a drift: new interactions).
        Then candidates are proposed from the examples of the worse window and the next
        ``sample``, rather than at the next ``later_every``. (Letting every dropped change be
        tried again at once as well was measured: the changes tried first then took the slots of
        those the new stream needed, a network's batch on drifting Agrawal.)"""
        self._window += (len(losses), float(losses.sum()), float((losses * losses).sum()), float(labels.sum()))
        if self._window[0] < self.settings.sample:
            return
        self._windows = [*self._windows[-(2 * CHANGE_SCALES[-1] - 1):], self._window]
        self._window = np.zeros(4)
        for scale in CHANGE_SCALES:
            if len(self._windows) < 2 * scale:
                return
            before, now = sum(self._windows[-2 * scale:-scale]), sum(self._windows[-scale:])
            means, variance = [], 0.0
            for n, total, squares, clicks in (before, now):
                rate = min(max(clicks / n, 1e-4), 1 - 1e-4)
                entropy = -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))
                means.append(total / n / entropy)
                variance += max(squares / n - (total / n) ** 2, 1e-12) / n / entropy**2
            if (means[1] - means[0]) / math.sqrt(variance) >= self.settings.change_z:
                break
        else:
            return
        self.changes.append(self.examples)
        self._windows = []  # the old stream's losses are no baseline for the new one
        # the worse window's examples, and the next ones, are what the proposal reads
        keep = 0
        while keep < len(self._recent) and sum(len(y) for _, y in self._recent[keep:]) > now[0]:
            keep += 1
        self._recent = self._recent[max(keep - 1, 0):]
        if self.settings.later_every:
            self._next_later = self.examples + self.settings.sample

    def _sample_later(self, batch: SparseBatch) -> None:
        """After the rounds, keep the latest examples; every ``later_every`` examples, propose
        candidates from them, so that an interaction that appears late (the stream changed) is
        found too. There is no catch-up then (nothing is kept from the start): a challenger that
        switches the new candidates on starts them at zero, warm, and the new count features are
        counted from the latest examples on."""
        self._recent.append((batch.ids.numpy(), batch.labels.numpy()))
        while sum(len(y) for _, y in self._recent) - len(self._recent[0][1]) >= SCORED_ROWS:
            self._recent.pop(0)
        if self.examples < self._next_later:
            return
        while self._next_later <= self.examples:
            self._next_later += self.settings.later_every
        ids = np.concatenate([i for i, _ in self._recent])
        labels = np.concatenate([y for _, y in self._recent])
        found = propose(self.spec, ids, labels, self.settings, PAIR_FIELDS)
        if getattr(self.champion, "wide", None) is None or not (found.crosses or found.counts):
            return
        self._adopt_candidates(found, ids, labels, recount=True)
        # the grouped moves now switch on another set: their earlier failures are not theirs
        self._retry_at = {k: v for k, v in self._retry_at.items() if not k.startswith("+")}

    def _adopt_candidates(self, found: Candidates, ids: np.ndarray, labels: np.ndarray, recount: bool) -> None:
        """The champion rebuilt with ``found`` among its candidates (switched off); the counts of
        the new count features from ``ids`` and ``labels`` where ``recount``."""
        if self.candidates is None:
            self.candidates = found
        else:
            self.candidates.crosses += found.crosses
            self.candidates.counts += found.counts
            self.candidates.scores.update(found.scores)
        spec = dataclasses.replace(self.spec, crosses=self.spec.crosses + tuple(found.crosses),
                                   counts=self.spec.counts + tuple(found.counts))
        examples = SparseBatch(torch.from_numpy(ids), torch.zeros((len(ids), 0), dtype=torch.int64),
                               torch.zeros((len(ids), 0)), torch.from_numpy(labels.astype(np.float32)))
        self.champion = widen(self.champion, spec, examples if recount else None)
        self._share_counts()
        self.challengers = []  # forked from the champion before: another spec, other count tables

    def _catch_up(self, kept: list[tuple[SparseBatch, np.ndarray]]) -> None:
        """Challengers that switch on every candidate and learn every example kept, from the
        untrained copy: the models the champion's settings with the candidates (and, beside the
        first, the same with FTRL's ``alpha`` changed, while there is room) would have been had
        they been known from the first example. A warm copy of the champion would start the new
        crosses at zero, and could win only after learning them again from then on; and how fast
        FTRL learns them shows most from the first example, where its steps are largest.

        Their predictions while they catch up are made before they learn each example, as the
        champion's were when the example arrived, so the two are already paired evidence: they
        can be judged at once. (The candidates were chosen on the same examples, but by click
        rates memorised prequentially, which gain nothing from a pair of values that does not
        recur.)"""
        moves = self.moves()
        switch = next((m for m in moves if m.name.startswith(("+crosses", "+counts"))), None)
        if switch is None:
            return
        # beside it, the same with a new FTRL alpha, unless that change failed lately (the retry
        # schedule of the change alone or of this pair): a catch-up costs every example kept
        variants = [switch] + [Move(f"{switch.name}, {m.name}", {**switch.changes, **m.changes})
                               for m in moves if m.name.startswith("ftrl.alpha") and not self._resting(m.name)
                               and not self._resting(f"{switch.name}, {m.name}")]
        examples = sum(len(b) for b, _ in kept)
        for n, move in enumerate(variants[:self.settings.live - 1]):
            if n and not self._catch_up_affordable(examples):
                break  # the first always: finding the candidates is the point
            model = _configured(copy.deepcopy(self._initial), _changed(self.champion.config, move.changes))
            member = Member(move, model, predictions=[], steps=self._steps_of(move))
            started = time.process_time()
            for batch, champion in kept:
                member.record(learn_in_steps(member.model, batch_for(member.model, batch), member.steps), champion,
                              batch.labels.numpy().astype(np.float64))
            self._challenger_cpu += time.process_time() - started
            member.caught_up = member.seen
            self._member_examples += member.seen
            if getattr(member.model, "seen", None) is not None:  # it counted the same examples: read the shared tables
                member.model.seen = self.champion.seen
            self.challengers.append(member)
            self._count_search_cpu()

    # -------------------------------------------------------------- judging

    def _judge(self) -> None:
        s = self.settings
        # judged once per judge_after examples, not after every batch: fewer looks at the same
        # evidence, fewer changes promoted by chance
        ready = [m for m in self.challengers if m.seen // s.judge_after > m.looks]
        for member in ready:
            member.looks = member.seen // s.judge_after
        winners = [m for m in ready if m.z >= s.z and m.mean < 0]
        if winners:
            best = max(winners, key=lambda m: m.z)
            # both measured against what the champion predicted, not against each other: of two
            # caught-up siblings, the one making fewer changes goes first, and the other stays on
            # as its challenger, re-paired (_against), so that its extra change must win by itself
            best = min((m for m in winners if _makes_fewer_changes(m, best)), key=lambda m: len(m.move.changes),
                       default=best)
            self.champion = best.model
            self.steps = best.steps
            self.adopted.append(best.move.name)
            self.promotions.append({"at": self.examples, **best.summary()})
            self.challengers = [m for m in (_against(other, best) for other in self.challengers) if m is not None]
            return
        for member in ready:
            overdue = member.seen - member.caught_up >= s.give_up_after
            # one that is ahead keeps its place while no other change waits for it: a slot left
            # empty learns nothing, and a small gain needs many examples to show
            if member.z <= -s.z or (overdue and (member.mean >= 0 or self._others_waiting())):
                self.challengers.remove(member)
                failures = self._failed[member.move.name] = self._failed.get(member.move.name, 0) + 1
                # what did not pay may pay on a longer (or changed) stream: tried again once the
                # stream is 2, 4, 8 ... times as long as when it failed, so its cost fades
                self._retry_at[member.move.name] = self.examples * 2**failures
                self.dropped.append({"at": self.examples, **member.summary()})

    def _fill(self) -> None:
        if not self._within_budget():  # the running ones go on to their verdict; no new ones until it is
            return
        running = {m.move.name for m in self.challengers}
        for move in self.moves():
            if len(self.challengers) >= self.settings.live - 1:
                return
            if move.name in running or self._resting(move.name):
                continue
            self.challengers.append(Member(move, retune(self.champion, move.changes), steps=self._steps_of(move)))
            running.add(move.name)

    def _steps_of(self, move: Move) -> int:
        """The steps a member making ``move`` learns each batch in: the champion's, unless it changes them."""
        return move.changes.get(STEPS, self.steps)

    def _others_waiting(self) -> bool:
        """Whether a change not running now could start (it is not resting after a failure)."""
        running = {m.move.name for m in self.challengers}
        return any(m.name not in running and not self._resting(m.name) for m in self.moves())

    def _resting(self, name: str) -> bool:
        """Whether a change failed lately: before its retry, once the stream is 2^k times as long as
        when it failed for the k-th time (whatever the champion did since: a stream that changes
        may come to reward what it did not)."""
        return self.examples < self._retry_at.get(name, 0)

    def moves(self) -> list[Move]:
        """The changes worth trying from the champion, most promising first."""
        config = self.champion.config
        out: list[Move] = []
        single: list[Move] = []  # one cross at a time: tried last
        candidates = self.candidates or Candidates()
        if hasattr(config, "ftrl"):
            ignored = tuple(config.ftrl.ignored)
            crosses = [f"{a}:{b}" for a, b in candidates.crosses if f"{a}:{b}" in ignored]
            counts = [f"count:{k}" for k in candidates.counts if f"count:{k}" in ignored]

            def switched_on(keys: list[str]) -> dict[str, Any]:
                return {"ftrl.ignored": tuple(k for k in ignored if k not in keys)}

            if crosses and counts:
                out.append(Move("+crosses+counts", switched_on(crosses + counts)))
            if len(crosses) > 1:
                out.append(Move("+crosses " + ",".join(crosses), switched_on(crosses)))
            if counts:
                out.append(Move("+counts " + ",".join(k[len("count:"):] for k in counts), switched_on(counts)))
            alpha = config.ftrl.alpha
            if alpha * 3 <= 5.0:
                out.append(Move("ftrl.alpha x3", {"ftrl.alpha": alpha * 3}))
            if alpha / 3 >= 1e-3:
                out.append(Move("ftrl.alpha /3", {"ftrl.alpha": alpha / 3}))
            l1, l2 = config.ftrl.l1, config.ftrl.l2
            if max(l1, l2) > 0.05:
                out.append(Move("ftrl.l1,l2 /3", {"ftrl.l1": l1 / 3, "ftrl.l2": l2 / 3}))
            if max(l1, l2) < 30:
                out.append(Move("ftrl.l1,l2 x3", {"ftrl.l1": l1 * 3, "ftrl.l2": l2 * 3}))
            single = [Move(f"+cross {key}", switched_on([key])) for key in crosses]
        if hasattr(config, "embedding"):
            # the network's steps: more of them adapt faster (a drifting stream), fewer average more
            if self.steps * 4 <= MAX_STEPS:
                out.append(Move("batch /4", {STEPS: self.steps * 4}))
            if self.steps >= 4:
                out.append(Move("batch x4", {STEPS: self.steps // 4}))
            rate = config.embedding.lr
            if rate * 2 <= 20.0:
                out.append(Move("embedding.lr x2", {"embedding.lr": rate * 2}))
            if rate / 2 >= 1e-3:
                out.append(Move("embedding.lr /2", {"embedding.lr": rate / 2}))
        return out + single

    # -------------------------------------------------------------- what it shows

    def configuration(self) -> dict[str, Any]:
        """The champion's configuration (:func:`configuration_of`), and the steps it learns each
        batch in."""
        return {**configuration_of(self.spec, self.champion.config), "steps_per_batch": self.steps}

    @property
    def compute_multiple(self) -> float:
        return self._member_examples / self.examples if self.examples else 0.0

    def state(self) -> dict[str, Any]:
        """What a resumed search needs to go on (kept in each version's metadata): the candidates,
        what was adopted, promoted and dropped. Challengers are not kept: a resumed search forks
        new ones from the champion it resumes with."""
        return {"examples": self.examples, "member_examples": self._member_examples, "steps": self.steps,
                "champion_cpu": self._champion_cpu, "challenger_cpu": self._challenger_cpu,
                "search_cpu": self._search_cpu,
                "candidates": None if self.candidates is None else {
                    "crosses": [list(c) for c in self.candidates.crosses], "counts": self.candidates.counts,
                    "scores": self.candidates.scores},
                "adopted": self.adopted, "promotions": self.promotions, "dropped": self.dropped,
                "changes": self.changes,
                "failed": self._failed, "retry_at": self._retry_at}

    @classmethod
    def resumed(cls, model: OnlineModel, settings: SearchSettings, state: dict[str, Any] | None) -> OnlineSearch:
        """The search going on from a version: ``state`` from its metadata (None: the version was
        learned without a search, which starts now, its counts from zero)."""
        search = cls(model, settings, fresh=False)
        if state is None:
            return search
        search.examples = int(state["examples"])
        search.steps = int(state.get("steps", 1))
        search._member_examples = int(state["member_examples"])
        search._champion_cpu = float(state.get("champion_cpu", 0.0))
        search._challenger_cpu = float(state.get("challenger_cpu", 0.0))
        search._search_cpu = float(state.get("search_cpu", 0.0))
        while search._rounds_left and search._next_round <= search.examples:  # rounds already done
            search._rounds_left -= 1
            search._next_round *= 4
        while settings.later_every and search._next_later <= search.examples:
            search._next_later += settings.later_every
        found = state.get("candidates")
        if found is not None:
            search.candidates = Candidates([(a, b) for a, b in found["crosses"]], list(found["counts"]),
                                           dict(found["scores"]))
        search.adopted, search.promotions, search.dropped = state["adopted"], state["promotions"], state["dropped"]
        search.changes = list(state.get("changes", []))
        search._failed = dict(state["failed"])
        search._retry_at = {k: int(v) for k, v in state.get("retry_at", {}).items()}
        return search

    def report(self) -> dict[str, Any]:
        return {
            "examples": self.examples,
            "configuration": self.configuration(),
            "adopted": list(self.adopted),
            "promotions": list(self.promotions),
            "dropped": list(self.dropped),
            "changes": list(self.changes),
            "challengers": [m.summary() for m in self.challengers],
            "candidates": dict(self.candidates.scores) if self.candidates else {},
            "compute_multiple": self.compute_multiple,
            "learning_multiple": self.learning_multiple,
            "cpu_multiple": self.cpu_multiple,
        }

    def extra_metrics(self) -> dict[str, Any]:
        return {**self.champion.extra_metrics(), "search": self.report()}


__all__ = ["Candidates", "Member", "Move", "OnlineSearch", "SearchSettings", "batch_for", "configuration_of", "propose",
           "retune", "widen"]
