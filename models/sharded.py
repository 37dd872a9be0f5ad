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

Not sharded yet, and refused by name: keyed tables, count features (their counts would need the
whole batch's occurrences in order), and sequence models (their histories are per-user state).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from streamrec.models.batch_unique import BatchUnique
from streamrec.models.deep_base import DeepModel, leaf_rows
from streamrec.models.wide_inputs import wide_ids
from streamrec.stream.errors import ConfigError
from streamrec.stream.sparse_batch import SparseBatch


def shard_rows(rows: int, rank: int, world: int) -> int:
    """How many of ``rows`` ids rank ``rank`` of ``world`` owns (ids ``rank, rank + world, ...``)."""
    return len(range(rank, rows, world))


@dataclass
class Routed:
    """A rank's distinct ids sent to their owners: ``order`` sorts them by owner, ``sent`` and
    ``received`` are the split sizes of the two all-to-alls, ``asked`` the local rows owners were
    asked for (each owner's view, every rank's requests one after another)."""

    order: torch.Tensor
    sent: list[int]
    received: list[int]
    asked: torch.Tensor


class ShardedModel:
    """A :class:`DeepModel` whose tables are split across the ranks of a process group; see the
    module docstring. Build the same model (same spec, settings and seed) on every rank, wrap it,
    and give :meth:`learn` each rank's share of every global batch, all ranks in step."""

    def __init__(self, model: DeepModel, group: dist.ProcessGroup | None = None) -> None:
        if not isinstance(model, DeepModel):
            raise ConfigError(f"{model.name}: only embedding models (DeepModel) can be sharded")
        if model.spec.keyed:
            raise ConfigError("tables=keyed: keyed tables are not sharded across ranks yet; use hashed tables")
        if model.seen is not None:
            raise ConfigError("count features are not sharded across ranks yet; train without --count")
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
        self.embedding_rows = model.embedding.weight.shape[0]
        self.wide_rows = model.wide.z.shape[0] if model.wide is not None else 0
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

    def full_tensors(self) -> dict[str, torch.Tensor]:
        """The whole model's tensors as one process would hold them (every rank takes part; each
        gets the same result)."""
        out = dict(self.model.tensors())
        e = self.model.embedding
        for name, local in (("embedding.weight", e.weight), ("embedding.accum", e.accum),
                            ("embedding.counts", e.counts)):
            out[name] = self._unshard(local, self.embedding_rows)
        if self.model.wide is not None:
            out["wide.z"] = self._unshard(self.model.wide.z, self.wide_rows)
            out["wide.n"] = self._unshard(self.model.wide.n, self.wide_rows)
        return out

    def _unshard(self, local: torch.Tensor, rows: int) -> torch.Tensor:
        most = shard_rows(rows, 0, self.world)
        padded = torch.zeros((most, *local.shape[1:]), dtype=local.dtype)
        padded[:local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded, group=self.group)
        full = torch.empty((rows, *local.shape[1:]), dtype=local.dtype)
        for rank, part in enumerate(parts):
            full[rank::self.world] = part[:shard_rows(rows, rank, self.world)]
        return full

    # ------------------------------------------------------------------ exchanges

    def _all_to_all(self, values: torch.Tensor, sent: list[int], received: list[int]) -> torch.Tensor:
        out = torch.empty((sum(received), *values.shape[1:]), dtype=values.dtype)
        dist.all_to_all_single(out, values.contiguous(), output_split_sizes=received, input_split_sizes=sent,
                               group=self.group)
        self.bytes_sent += values.numel() * values.element_size()
        return out

    def _route(self, distinct: torch.Tensor) -> Routed:
        """Send ``distinct`` ids to the ranks that own them; learn what every rank asks of this one."""
        owner = distinct % self.world
        order = torch.argsort(owner, stable=True)
        sent_sizes = torch.bincount(owner, minlength=self.world)
        received_sizes = torch.empty_like(sent_sizes)
        dist.all_to_all_single(received_sizes, sent_sizes, group=self.group)
        sent, received = sent_sizes.tolist(), received_sizes.tolist()
        asked = self._all_to_all(distinct.index_select(0, order), sent, received)
        return Routed(order, sent, received, asked // self.world)

    def _answer(self, routed: Routed, rows: torch.Tensor) -> torch.Tensor:
        """Owners' ``rows`` (one per id they were asked for) back to the asking ranks, in the asker's order of ids."""
        back = self._all_to_all(rows, routed.received, routed.sent)
        out = torch.empty_like(back)
        out.index_copy_(0, routed.order, back)
        return out

    def _to_owners(self, routed: Routed, values: torch.Tensor) -> torch.Tensor:
        """Per-id ``values`` of this rank's distinct ids to their owners, in the order owners were asked."""
        return self._all_to_all(values.index_select(0, routed.order), routed.sent, routed.received)

    @staticmethod
    def _sum_by_row(asked: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What several ranks sent for the same local row, added up: (distinct rows, summed values)."""
        rows, inverse = torch.unique(asked, return_inverse=True)
        summed = torch.zeros((rows.shape[0], *values.shape[1:]), dtype=values.dtype)
        summed.index_add_(0, inverse, values)
        return rows, summed

    # ------------------------------------------------------------------ learning

    def learn(self, batch: SparseBatch) -> np.ndarray:
        """Learn this rank's share of a global batch (every rank calls it once per global batch,
        an empty share included); this share's probabilities as they were before the step."""
        assert batch.labels is not None, "learn needs labels"
        model = self.model
        total = torch.tensor([len(batch)], dtype=torch.int64)
        dist.all_reduce(total, group=self.group)
        global_size = int(total.item())
        # the rows this share reads, from their owners
        e_distinct, e_inverse = self._embedding_unique(batch.ids)
        e_routed = self._route(e_distinct)
        leaf = self._answer(e_routed, model.embedding.weight.index_select(0, e_routed.asked)).requires_grad_(True)
        logit = torch.zeros(len(batch), dtype=torch.float64)
        if model.wide is not None:
            coordinates = wide_ids(model.spec, batch, None, learning=True, columns=model.wide_columns)
            w_distinct, w_inverse = self._wide_unique(coordinates)
            w_routed = self._route(w_distinct)
            weights = self._answer(w_routed, model.wide.weights(w_routed.asked))
            logit = weights.index_select(0, w_inverse.reshape(-1)).view(w_inverse.shape).sum(dim=1)
        # the forward and backward pass of this share, on the global batch's mean logloss
        deep = model.deep_logit(leaf_rows(leaf, e_inverse), batch.dense)
        p = torch.sigmoid(logit + deep.detach().to(torch.float64))
        residual = p - batch.labels.to(torch.float64)
        (deep * (residual / global_size).to(torch.float32)).sum().backward()
        # the network: every replica steps on the gradient summed over all ranks (a parameter no
        # rank has a gradient for is left out of the step, as one process would leave it out)
        params = list(model.adam.params.values())
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
        model.adam.step()
        # the tables: owners step each row once on what every rank sent for it
        grad = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
        occurrences = torch.bincount(e_inverse.reshape(-1), minlength=e_distinct.shape[0]).to(torch.float32)
        packed = self._to_owners(e_routed, torch.cat([grad * global_size, occurrences.unsqueeze(1)], dim=1))
        rows, summed = self._sum_by_row(e_routed.asked, packed)
        model.embedding.apply(rows, summed[:, :-1], summed[:, -1])
        if model.wide is not None:
            per_coordinate = torch.zeros(w_distinct.shape[0], dtype=torch.float64)
            per_coordinate.index_add_(0, w_inverse.reshape(-1),
                                      residual.unsqueeze(1).expand(w_inverse.shape).reshape(-1))
            rows, summed_w = self._sum_by_row(w_routed.asked, self._to_owners(w_routed, per_coordinate))
            model.wide._apply(model.wide._gather(rows), summed_w)
        return p.numpy()

    def predict(self, batch: SparseBatch) -> np.ndarray:
        """Probabilities for this rank's share of a global batch (every rank calls it together)."""
        model = self.model
        with torch.no_grad():
            e_distinct, e_inverse = self._embedding_unique(batch.ids)
            e_routed = self._route(e_distinct)
            rows = self._answer(e_routed, model.embedding.weight.index_select(0, e_routed.asked))
            logit = model.deep_logit(leaf_rows(rows, e_inverse), batch.dense).to(torch.float64)
            if model.wide is not None:
                coordinates = wide_ids(model.spec, batch, None, columns=model.wide_columns)
                w_distinct, w_inverse = self._wide_unique(coordinates)
                w_routed = self._route(w_distinct)
                weights = self._answer(w_routed, model.wide.weights(w_routed.asked))
                logit = logit + weights.index_select(0, w_inverse.reshape(-1)).view(w_inverse.shape).sum(dim=1)
            return torch.sigmoid(logit).numpy()
