"""One model learned by the ranks of a torch.distributed process group, its per-id tables sharded.

TorchRec's design (row-wise sharded tables, ids and rows exchanged all-to-all, a data-parallel
dense part), written on torch.distributed directly (docs/distributed.md says why not TorchRec):

* every per-id table is split by rows: id ``i`` lives on rank ``i % R`` at local row ``i // R``
  (the embedding rows with their Adagrad state and counts, the FTRL part's ``z`` and ``n``);
* the network's parameters and their Adam state are replicated on every rank;
* each rank learns from its own share of a global mini-batch. Per step it sends the distinct ids
  its share needs to their owners and gets their rows (all-to-all), runs the forward and backward
  pass on its share, sends each id's summed gradient back to its owner (all-to-all), and
  all-reduces the network's gradients. Owners add up what every rank sent for a row and step it
  once; every replica steps the network on the same summed gradient.

So a global batch teaches the model what one process learning that whole batch would teach it
(the FTRL part steps once per batch, ``ftrl.per_example`` off, as a mini-batch step must), up to
the order floating-point sums are taken in (tests/test_sharded.py).

Keyed tables (models/keyed_rows.py) are sharded by key: each rank's tables admit, expire and
evict the keys it owns, within its share of the row budget, and a key's row starts from the
key's own seeded values wherever it lives. Until a budget is reached ranks learn exactly what one
process learns; past it, each rank frees its own least recently used rows, and keys waiting for a
row share a row of their region per rank rather than one in all.

Each rank writes its own shard (:meth:`ShardedModel.shard_bytes`, and its deltas with
:meth:`ShardedModel.shard_delta_bytes`); :func:`join_shards` and :func:`join_delta_shards` make
them one model and one delta for whoever reads them (rank ``r``'s local row ``i`` at row
``i * R + r``, keyed tables too, so deltas land where the version put the rows), and a whole
model loaded before wrapping is split by key, so a model written by N ranks resumes on M.

Count features (models/seen_counts.py) are sharded by counted value too: each rank asks the
owners of its examples' values for their counts, and owners count the global batch's earlier
examples in order, so the levels are one process's (:meth:`ShardedModel._count_ids`).

Not sharded yet, and refused by name: sequence models (their histories are per-user state).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from streamrec.models.base import DELTA_FORMAT, DeltaTensors, OnlineModel, load_tensors_blob, read_metadata
from streamrec.models.batch_unique import BatchUnique
from streamrec.models.deep_base import DeepModel, leaf_rows
from streamrec.models.keyed_rows import FREE, KeyedRows
from streamrec.models.seen_counts import earlier_in_batch
from streamrec.models.wide_inputs import wide_ids
from streamrec.stream.errors import ConfigError, ModelError
from streamrec.stream.sparse_batch import SparseBatch


def shard_rows(rows: int, rank: int, world: int) -> int:
    """How many of ``rows`` ids rank ``rank`` of ``world`` owns (ids ``rank, rank + world, ...``)."""
    return len(range(rank, rows, world))


@dataclass
class Plan:
    """One step's routing: this rank's distinct embedding and FTRL ids sorted by owner
    (``*_order``), how many go to each rank (``*_to``), how many each rank asked of this one
    (``*_from``), the local rows that answer what was asked (every asking rank's in turn), and the
    global batch size."""

    e_order: torch.Tensor
    w_order: torch.Tensor
    e_to: list[int]
    w_to: list[int]
    e_from: list[int]
    w_from: list[int]
    e_rows: torch.Tensor
    w_rows: torch.Tensor
    global_size: int


def gather_rows(local: torch.Tensor, group: dist.ProcessGroup | None = None) -> list[torch.Tensor]:
    """Every rank's ``local`` rows (their count may differ between ranks), on every rank, in rank order."""
    world = dist.get_world_size(group)
    size = torch.tensor([local.shape[0]], dtype=torch.int64)
    sizes = [torch.empty_like(size) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    padded = torch.zeros((max(int(n) for n in sizes), *local.shape[1:]), dtype=local.dtype)
    padded[:local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded, group=group)
    return [part[:int(n)] for part, n in zip(parts, sizes)]


def _sorted_unique(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct keys and the inverse index (keys span 2^40: too many for BatchUnique's scratch)."""
    distinct, inverse = torch.unique(ids.reshape(-1), return_inverse=True)
    return distinct, inverse.view(ids.shape)


def _as_float32(values: torch.Tensor) -> torch.Tensor:
    """float64 values as pairs of float32 words (the same bits), to share one float32 exchange."""
    return values.contiguous().view(torch.float32).reshape(-1, 2)


def _as_float64(words: torch.Tensor) -> torch.Tensor:
    return words.contiguous().view(torch.float64).reshape(-1)


def join_shards(parts: list[dict[str, torch.Tensor]], whole: OnlineModel) -> dict[str, torch.Tensor]:
    """Every rank's shard (:meth:`OnlineModel.row_sparse_tensors` of its part of the model, in
    rank order) as the row-sparse tensors of ``whole``, a fresh model of the same spec and config
    (``whole.load_row_sparse`` takes them). Tensors outside the row groups are replicated and come
    from shard 0; every table's local row ``i`` of rank ``r`` is row ``i * R + r`` (:func:`_join_rows`),
    so that a rank's later deltas land on the same rows (:func:`join_delta_shards`)."""
    out = {name: value for name, value in parts[0].items() if "@" not in name}
    keyed = whole.keyed_tables()
    for group, (_touched, names) in whole.row_groups().items():
        out.update(_join_rows(group, names, parts, keyed=group in keyed))
        if group in keyed:
            out.update(_join_table_state(group, parts, out[f"{group}@rows"]))
    return out


def join_delta_shards(shards: Sequence[bytes]) -> DeltaTensors:
    """Every rank's delta of one step (:meth:`ShardedModel.shard_delta_bytes`, any order) as one
    delta of the whole model a scorer holds (a version joined by :func:`join_shards`)."""
    metas = [read_metadata(blob, DELTA_FORMAT) for blob in shards]
    order = shard_order(metas)
    parts = [load_tensors_blob(shards[k]) for k in order]
    out = {name: value for name, value in parts[0].items() if "@" not in name}
    for group in sorted(name[:-len("@rows")] for name in parts[0] if name.endswith("@rows")):
        names = tuple(sorted({name[:-len("@touched")] for part in parts for name in part
                              if name.endswith("@touched") and name.startswith(f"{group}.")}))
        out.update(_join_rows(group, names, parts, keyed=f"{group}.keys" in names))
    first = metas[order[0]]
    return DeltaTensors(first.get("model", ""), first.get("dense") == "1", out)


def shard_order(metas: list[dict[str, str]]) -> list[int]:
    """The blobs' indices in rank order, once each shard ``0 .. R-1`` is checked to be there once."""
    try:
        order = sorted(range(len(metas)), key=lambda k: int(metas[k]["shard"]))
        places = [(int(metas[k]["shard"]), int(metas[k]["shards"])) for k in order]
    except (KeyError, ValueError):
        raise ModelError("a blob among the shards is not a shard of a model learned by ranks") from None
    if not metas or places != [(rank, len(metas)) for rank in range(len(metas))]:
        raise ModelError(f"shards {places} (shard, of) are not every shard of one model once")
    return order


def _join_rows(group: str, names: tuple[str, ...], parts: list[dict[str, torch.Tensor]],
               keyed: bool) -> dict[str, torch.Tensor]:
    """One row group of every rank's shard (or delta): local row ``i`` of rank ``r`` is row
    ``i * R + r``. In a keyed table a region's shared row (keys waiting for a row of their own read
    it) is on every rank that needed one, but the whole model has one per region: rank 0's is it,
    and the other ranks' (and their reserved row 0) are written as free rows, which also frees
    whatever those rows held before (a delta)."""
    world = len(parts)
    out = {f"{group}@rows": torch.cat([part[f"{group}@rows"] * world + rank for rank, part in enumerate(parts)])}
    for name in names:
        out[f"{name}@touched"] = torch.cat([part[f"{name}@touched"] for part in parts])
    if keyed:
        keys = [part[f"{group}.keys@touched"] for part in parts]
        keys = [k if rank == 0 else torch.where(k < FREE, torch.full_like(k, FREE), k)
                for rank, k in enumerate(keys)]
        out[f"{group}.keys@touched"] = torch.cat(keys)
    return out


def _join_table_state(group: str, parts: list[dict[str, torch.Tensor]], rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """A keyed table's learning state from every rank's: the clock and event-time state are the
    same on every rank; the admission filters are merged by their larger counts (a key is never
    counted short), the counters summed."""
    filters = [part[f"{group}.table.filter"] for part in parts if part[f"{group}.table.filter"].numel()]
    # clock, next row, evicted, admitted, next expiry, sightings not admitted
    counters = parts[0][f"{group}.table.clock"].clone()
    summed = torch.stack([part[f"{group}.table.clock"] for part in parts]).sum(dim=0)
    counters[1] = int(rows.max()) + 1 if len(rows) else 1
    counters[2], counters[3], counters[5] = summed[2], summed[3], summed[5]
    return {f"{group}.table.filter": torch.stack(filters).amax(dim=0) if filters else torch.zeros(0, dtype=torch.uint8),
            f"{group}.table.clock": counters}


class ShardedModel:
    """A :class:`DeepModel` whose tables are split across the ranks of a process group; see the
    module docstring. Build the same model (same spec, settings and seed) on every rank, wrap it,
    and give :meth:`learn` each rank's share of every global batch, all ranks in step."""

    def __init__(self, model: DeepModel, group: dist.ProcessGroup | None = None) -> None:
        if not isinstance(model, DeepModel):
            raise ConfigError(f"{model.name}: only embedding models (DeepModel) can be sharded")
        if model.history_length:
            raise ConfigError(f"{model.name}: sequence models' histories are not sharded across ranks yet")
        if model.wide is not None and model.wide.config.per_example:
            raise ConfigError("ftrl.per_example: ranks learn a global mini-batch in one step; "
                              "set ftrl.per_example=false")
        self.model = model
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        self.bytes_sent = 0  # payload bytes this rank put into collectives
        self._counting: tuple[np.ndarray, np.ndarray] | None = None  # count rows to count in after a step
        self.keyed = model.spec.keyed
        self.embedding_rows = model.embedding.weight.shape[0]
        self.wide_rows = model.wide.z.shape[0] if model.wide is not None else 0
        if self.keyed:
            # each rank's tables hold the keys it owns, within its share of the row budget
            for table in model.keyed_tables().values():
                if table.max_rows:
                    table.max_rows = -(-table.max_rows // self.world)
            self._keep_own_keys()
            self._embedding_unique = self._wide_unique = _sorted_unique
        else:
            self._shard_tables()
            # distinct ids of a share are found over the whole id space; a shard's own steps over its rows
            self._embedding_unique = BatchUnique(self.embedding_rows)
            self._wide_unique = BatchUnique(self.wide_rows)

    # ------------------------------------------------------------------ the shards

    def _shard_tables(self) -> None:
        """Keep this rank's rows of every table (the same full tables were built on every rank
        from the same seed, so the shards start as one process's table would)."""
        r, w = self.rank, self.world
        e = self.model.embedding
        e.weight, e.accum, e.counts = e.weight[r::w].clone(), e.accum[r::w].clone(), e.counts[r::w].clone()
        e.rows_loaded(e.weight.shape[0])
        if self.model.wide is not None:
            f = self.model.wide
            f.z, f.n = f.z[r::w].clone(), f.n[r::w].clone()
            f.rows_loaded(f.z.shape[0])
        if self.model.seen is not None:
            c = self.model.seen
            c.count, c.clicks = c.count[r::w].clone(), c.clicks[r::w].clone()
            c.rows_loaded(c.count.shape[0])

    def shard_bytes(self, extra_metadata: dict[str, str] | None = None) -> bytes:
        """This rank's shard as a version stores it (safetensors, no collective): its own rows at
        their local row numbers, the replicated network, and which shard of how many it is.
        :func:`model_from_shards` joins every rank's into the whole model."""
        return self.model.to_bytes({**(extra_metadata or {}), "shard": str(self.rank), "shards": str(self.world)})

    def shard_delta_bytes(self, include_dense: bool) -> bytes:
        """This rank's rows changed since its previous delta (:meth:`OnlineModel.delta_bytes`, at
        local row numbers), and which shard of how many: :func:`join_delta_shards` joins every
        rank's delta of one step into one delta of the whole model."""
        return self.model.delta_bytes(include_dense, {"shard": str(self.rank), "shards": str(self.world)})

    def copy_from_shard(self, blob: bytes) -> ShardedModel:
        """A sharded copy of this model as it was when this rank wrote ``blob`` (its
        :meth:`shard_bytes`), in the same group: every rank makes its copy from its own shard."""
        local = self.model
        copy = ShardedModel(type(local)(local.spec, local.config), self.group)
        copy.model.load_row_sparse(st_load(blob))
        return copy

    def full_model(self) -> OnlineModel:
        """The whole model as one process would hold it (every rank takes part; each gets the same)."""
        mine = st_save(self.model.row_sparse_tensors())
        parts = gather_rows(torch.frombuffer(bytearray(mine), dtype=torch.uint8), self.group)
        whole = type(self.model)(self.model.spec, self.model.config)
        whole.load_row_sparse(join_shards([st_load(bytes(part.numpy())) for part in parts], whole))
        return whole

    def full_tensors(self) -> dict[str, torch.Tensor]:
        """The whole model's tensors as one process would hold them (every rank takes part)."""
        return self.full_model().tensors()

    def _keep_own_keys(self) -> None:
        """A loaded whole keyed model: this rank frees the rows of keys other ranks own (the
        regions' shared rows stay on every rank), and keeps the table's counters on rank 0 only,
        so that gathering them again sums to what was loaded."""
        for table in self.model.keyed_tables().values():
            keys = table.keys[: table.next_row]
            table.hand_over(np.flatnonzero((keys >= 0) & (keys % self.world != self.rank)))
            if self.rank:
                table.evicted = table.admitted = table.not_admitted = 0

    # ------------------------------------------------------------------ exchanges
    # Each collective is a point where every rank waits for the slowest, so a step has five: the
    # counts, the ids, the rows, the network's gradients and the rows' gradients. Embedding rows
    # and FTRL values travel in one float32 exchange (a float64 as two float32 words).

    def _exchange(self, parts: list[torch.Tensor], widths: list[int], to: list[list[int]],
                  came: list[list[int]]) -> list[torch.Tensor]:
        """All-to-all of several tables at once: ``parts[k]`` has rows of ``widths[k]`` values
        sorted by destination, ``to[k][r]`` of them for rank ``r``; ``came[k][r]`` rows of part
        ``k`` arrive from rank ``r``. Returns each part's rows from every rank, rank by rank."""
        flat = [part.reshape(-1) for part in parts]
        chunks, sent_sizes, at = [], [], [0] * len(parts)
        for rank in range(self.world):
            size = 0
            for k, part in enumerate(flat):
                n = to[k][rank] * widths[k]
                chunks.append(part[at[k]:at[k] + n])
                at[k] += n
                size += n
            sent_sizes.append(size)
        received_sizes = [sum(came[k][rank] * widths[k] for k in range(len(parts))) for rank in range(self.world)]
        send = torch.cat(chunks) if chunks else torch.empty(0, dtype=parts[0].dtype)
        out = torch.empty(sum(received_sizes), dtype=send.dtype)
        dist.all_to_all_single(out, send, output_split_sizes=received_sizes, input_split_sizes=sent_sizes,
                               group=self.group)
        self.bytes_sent += send.numel() * send.element_size()
        pieces: list[list[torch.Tensor]] = [[] for _ in parts]
        position = 0
        for rank in range(self.world):
            for k in range(len(parts)):
                n = came[k][rank] * widths[k]
                pieces[k].append(out[position:position + n])
                position += n
        return [torch.cat(piece).view(-1, widths[k]) for k, piece in enumerate(pieces)]

    def _plan(self, batch: SparseBatch, e_ids: tuple[torch.Tensor, torch.Tensor],
              w_ids: tuple[torch.Tensor, torch.Tensor], learning: bool) -> Plan:
        """Send each distinct id to its owner (with its occurrences, for keyed tables' admission);
        resolve what every rank asks of this one to local rows."""
        (e_distinct, e_inverse), (w_distinct, w_inverse) = e_ids, w_ids
        e_owner, w_owner = e_distinct % self.world, w_distinct % self.world
        e_order, w_order = torch.argsort(e_owner, stable=True), torch.argsort(w_owner, stable=True)
        newest = (float(batch.event_time.max()) if batch.event_time is not None and len(batch.event_time)
                  else float("-inf"))
        counts = torch.stack([torch.bincount(e_owner, minlength=self.world),
                              torch.bincount(w_owner, minlength=self.world),
                              torch.full((self.world,), len(batch), dtype=torch.int64),
                              torch.tensor([newest], dtype=torch.float64).view(torch.int64).expand(self.world)],
                             dim=1).contiguous()
        came = torch.empty_like(counts)
        dist.all_to_all_single(came, counts, group=self.group)
        e_to, w_to = counts[:, 0].tolist(), counts[:, 1].tolist()
        e_from, w_from = came[:, 0].tolist(), came[:, 1].tolist()
        global_size = int(came[:, 2].sum())
        e_sent, w_sent = e_distinct.index_select(0, e_order), w_distinct.index_select(0, w_order)
        if not self.keyed:
            e_asked, w_asked = self._exchange([e_sent, w_sent], [1, 1], [e_to, w_to], [e_from, w_from])
            return Plan(e_order, w_order, e_to, w_to, e_from, w_from, e_asked.reshape(-1) // self.world,
                        w_asked.reshape(-1) // self.world, global_size)
        # keyed: owners admit and map keys to their own rows, counting occurrences as one process would
        e_occurrences = torch.bincount(e_inverse.reshape(-1), minlength=len(e_distinct)).index_select(0, e_order)
        w_occurrences = torch.bincount(w_inverse.reshape(-1), minlength=len(w_distinct)).index_select(0, w_order)
        e_asked, w_asked = self._exchange([torch.stack([e_sent, e_occurrences], dim=1),
                                           torch.stack([w_sent, w_occurrences], dim=1)],
                                          [2, 2], [e_to, w_to], [e_from, w_from])
        model = self.model
        if learning:
            newest_all = float(came[:, 3].contiguous().view(torch.float64).max())
            if newest_all > float("-inf"):
                for table in model.keyed_tables().values():
                    if table.config.ttl_seconds:
                        table.observe_time(newest_all)
        e_rows = self._keyed_rows(model.embedding.table, e_asked, learning, global_size)
        w_rows = (self._keyed_rows(model.wide.table, w_asked, learning, global_size) if model.wide is not None
                  else torch.zeros(0, dtype=torch.int64))
        return Plan(e_order, w_order, e_to, w_to, e_from, w_from, e_rows, w_rows, global_size)

    @staticmethod
    def _keyed_rows(table: KeyedRows, asked: torch.Tensor, learning: bool, examples: int) -> torch.Tensor:
        """The owner's rows for asked (key, occurrences) pairs: learning admits what has earned a
        row (each key counted as often as it occurred) and moves the table's clock by the global batch."""
        keys, occurrences = asked[:, 0], asked[:, 1]
        if not learning:
            return table.rows(keys)
        every = torch.repeat_interleave(keys, occurrences)
        rows = table.learn_rows(every, examples)
        starts = torch.cumsum(occurrences, 0) - occurrences
        return rows.index_select(0, starts)

    def _read(self, plan: Plan) -> tuple[torch.Tensor, torch.Tensor]:
        """The embedding rows and FTRL weights of this rank's distinct ids, from their owners."""
        model = self.model
        rows = model.embedding.weight.index_select(0, plan.e_rows)
        weights = (model.wide.row_weights(plan.w_rows) if model.wide is not None
                   else torch.zeros(0, dtype=torch.float64))
        got_rows, got_weights = self._exchange([rows, _as_float32(weights)], [rows.shape[1], 2],
                                               [plan.e_from, plan.w_from], [plan.e_to, plan.w_to])
        e_values = torch.empty_like(got_rows).index_copy_(0, plan.e_order, got_rows)
        got = _as_float64(got_weights)
        return e_values, torch.empty_like(got).index_copy_(0, plan.w_order, got)

    @staticmethod
    def _sum_by_row(asked: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What several ranks sent for the same local row, added up: (distinct rows, summed values)."""
        rows, inverse = torch.unique(asked, return_inverse=True)
        summed = torch.zeros((rows.shape[0], *values.shape[1:]), dtype=values.dtype)
        summed.index_add_(0, inverse, values)
        return rows, summed

    # ------------------------------------------------------------------ learning

    def _distinct(self, batch: SparseBatch, learning: bool) -> tuple[torch.Tensor, ...]:
        model = self.model
        e_distinct, e_inverse = self._embedding_unique(batch.ids)
        if model.wide is None:
            empty = torch.zeros(0, dtype=torch.int64)
            return e_distinct, e_inverse, empty, empty.view(len(batch), 0)
        counts = self._count_ids(batch, learning) if model.seen is not None else None
        coordinates = wide_ids(model.spec, batch, None, learning=learning, columns=model.wide_columns,
                               count_ids=counts)
        return (e_distinct, e_inverse, *self._wide_unique(coordinates))

    def _count_ids(self, batch: SparseBatch, learning: bool) -> torch.Tensor:
        """The count levels of this rank's share (models/seen_counts.py), from the counts' owners.

        Each counted value (a keyed table's key, or a hashed table's row) lives on rank
        ``value % R``. Every rank sends each of its examples' values to their owners, in its
        examples' order; an owner gets them rank after rank, so in the global batch's order, and
        answers each with its count and clicks before it: the table's, plus the global batch's
        earlier examples when learning, as one process counts them. The owner counts them in
        after the step (:meth:`_record_counts`)."""
        seen = self.model.seen
        ids = batch.ids.numpy()
        values = seen.values(ids)
        size, keys = values.shape
        flat = values.reshape(-1)  # example by example
        labels = (np.repeat(batch.labels.numpy().astype(np.int64), keys) if batch.labels is not None
                  else np.zeros(flat.size, dtype=np.int64))
        owner = flat % self.world
        order = np.argsort(owner, kind="stable")
        to = np.bincount(owner, minlength=self.world)
        sizes = torch.from_numpy(np.stack([to, np.full(self.world, size)], axis=1).astype(np.int64))
        came = torch.empty_like(sizes)
        dist.all_to_all_single(came, sizes, group=self.group)
        to_list, came_list, global_size = to.tolist(), came[:, 0].tolist(), int(came[:, 1].sum())
        sent = torch.from_numpy(np.stack([flat[order], labels[order]], axis=1))
        asked = self._exchange([sent], [2], [to_list], [came_list])[0].numpy()
        asked_values, asked_labels = asked[:, 0], asked[:, 1]
        if self.keyed:
            table = seen.table
            rows = (table.learn_rows(torch.from_numpy(asked_values), global_size) if learning
                    else table.rows(torch.from_numpy(asked_values))).numpy()
        else:
            rows = asked_values // self.world
        counted = seen.count.numpy()[rows].astype(np.int64)
        clicked = seen.clicks.numpy()[rows].astype(np.int64)
        if learning:
            earlier, earlier_clicks = earlier_in_batch(asked_values[:, None], asked_labels)
            counted, clicked = counted + earlier[:, 0], clicked + earlier_clicks[:, 0]
            self._counting = (rows, asked_labels)
        answer = torch.from_numpy(np.stack([counted, clicked], axis=1))
        back = self._exchange([answer], [2], [came_list], [to_list])[0].numpy()
        mine = np.empty((flat.size, 2), dtype=np.int64)
        mine[order] = back
        return seen.coordinates(mine[:, 0].reshape(size, keys), mine[:, 1].reshape(size, keys))

    def _record_counts(self) -> None:
        """The owner counts in what it answered for while learning (after the step, as one process)."""
        if self._counting is not None:
            rows, labels = self._counting
            self._counting = None
            self.model.seen.count_rows(rows, labels)

    def learn(self, batch: SparseBatch) -> np.ndarray:
        """Learn this rank's share of a global batch (every rank calls it once per global batch,
        an empty share included); this share's probabilities as they were before the step."""
        assert batch.labels is not None, "learn needs labels"
        model = self.model
        e_distinct, e_inverse, w_distinct, w_inverse = self._distinct(batch, learning=True)
        plan = self._plan(batch, (e_distinct, e_inverse), (w_distinct, w_inverse), learning=True)
        rows, weights = self._read(plan)
        leaf = rows.requires_grad_(True)
        logit = weights.index_select(0, w_inverse.reshape(-1)).view(w_inverse.shape).sum(dim=1)
        if len(batch):
            # the forward and backward pass of this share, on the global batch's mean logloss
            deep = model.deep_logit(leaf_rows(leaf, e_inverse), batch.dense)
            p = torch.sigmoid(logit + deep.detach().to(torch.float64))
            residual = p - batch.labels.to(torch.float64)
            (deep * (residual / plan.global_size).to(torch.float32)).sum().backward()
        else:  # an empty share still takes part in every exchange
            p = residual = torch.zeros(0, dtype=torch.float64)
        self._step_network()
        # the tables: owners step each row once on what every rank sent for it
        grad = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
        occurrences = torch.bincount(e_inverse.reshape(-1), minlength=e_distinct.shape[0]).to(torch.float32)
        per_coordinate = torch.zeros(w_distinct.shape[0], dtype=torch.float64)
        per_coordinate.index_add_(0, w_inverse.reshape(-1), residual.unsqueeze(1).expand(w_inverse.shape).reshape(-1))
        e_packed = torch.cat([grad * plan.global_size, occurrences.unsqueeze(1)], dim=1).index_select(0, plan.e_order)
        got_e, got_w = self._exchange([e_packed, _as_float32(per_coordinate.index_select(0, plan.w_order))],
                                      [e_packed.shape[1], 2], [plan.e_to, plan.w_to], [plan.e_from, plan.w_from])
        table_rows, summed = self._sum_by_row(plan.e_rows, got_e)
        model.embedding.apply(table_rows, summed[:, :-1], summed[:, -1])
        if model.wide is not None:
            coordinates, summed_w = self._sum_by_row(plan.w_rows, _as_float64(got_w))
            model.wide.step_rows(coordinates, summed_w)
        self._record_counts()
        return p.numpy()

    def _step_network(self) -> None:
        """Every replica steps on the network's gradient summed over all ranks (a parameter no
        rank has a gradient for is left out of the step, as one process would leave it out)."""
        params = list(self.model.adam.params.values())
        flat = torch.cat([(torch.zeros_like(param) if param.grad is None else param.grad).reshape(-1)
                          for param in params] + [torch.tensor([float(param.grad is not None) for param in params])])
        dist.all_reduce(flat, group=self.group)
        self.bytes_sent += flat.numel() * flat.element_size()
        has_grad = flat[-len(params):]
        at = 0
        for k, param in enumerate(params):
            size = param.numel()
            param.grad = flat[at:at + size].view_as(param).clone() if has_grad[k] > 0 else None
            at += size
        self.model.adam.step()

    def predict(self, batch: SparseBatch) -> np.ndarray:
        """Probabilities for this rank's share of a global batch (every rank calls it together)."""
        with torch.no_grad():
            e_distinct, e_inverse, w_distinct, w_inverse = self._distinct(batch, learning=False)
            rows, weights = self._read(self._plan(batch, (e_distinct, e_inverse), (w_distinct, w_inverse),
                                                  learning=False))
            if not len(batch):
                return np.zeros(0)
            logit = self.model.deep_logit(leaf_rows(rows, e_inverse), batch.dense).to(torch.float64)
            logit = logit + weights.index_select(0, w_inverse.reshape(-1)).view(w_inverse.shape).sum(dim=1)
            return torch.sigmoid(logit).numpy()
