"""Where a sequence model's time goes, per batch: featurizing with the history, learning, recording
the batch's clicks, and, for ``dien``, its two GRUs alone (forward and backward).

    python bench/sequence_step.py --rows 100000 --models din,dien

One pass over a behaviour stream (producers/behaviour_generator.py, default settings), timed
part by part in one process, in milliseconds per batch of ``--batch-size``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import write_result  # noqa: E402


def recurrent_ms(batch: int, length: int, width: int, dim: int, repeats: int = 30) -> float:
    """dien's interest extractor (nn.GRU) and AUGRU, forward and backward, on random inputs."""
    import torch

    from streamrec.models.dien import AUGRU

    gru = torch.nn.GRU(width * dim, dim, batch_first=True)
    augru = AUGRU(dim, dim, torch.Generator().manual_seed(0))
    x = torch.randn(batch, length, width * dim, requires_grad=True)
    attention = torch.softmax(torch.randn(batch, length), dim=1)

    def step() -> None:
        states, _ = gru(x)
        augru(states, attention).sum().backward()

    for _ in range(3):
        step()
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    return 1000 * (time.perf_counter() - started) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--models", default="din,dien")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--history-length", type=int, default=0, help="0: each model's default")
    parser.add_argument("--name", default="sequence_step")
    args = parser.parse_args()
    from streamrec.models import create_model, spec_for
    from streamrec.models.progressive import progressive_step
    from streamrec.producers.behaviour_generator import generate_behaviour
    from streamrec.producers.generator import write_stream
    from streamrec.producers.readers import ReaderOptions, read_rows
    from streamrec.stream.behaviour_history import BehaviourHistory
    from streamrec.stream.feature_spec import SpecOptions
    from streamrec.stream.featurizer import Featurizer
    from streamrec.stream.quality_metrics import StreamingMetrics

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "behaviour.tsv"
        write_stream(generate_behaviour(args.rows, 1), out, 1)
        rows = list(read_rows(out, "criteo", ReaderOptions(user_field="C1", item_field="C2")))
    results = {}
    for name in args.models.split(","):
        options = SpecOptions(history_fields=("C3",), history_length=args.history_length)
        spec = spec_for(name, options.infer([r.features for r in rows[:1000]]))
        model, featurizer = create_model(name, spec), Featurizer(spec)
        history = BehaviourHistory(spec.history_kind, spec.history_length, fields=spec.history_fields)
        history.attach_encoder(featurizer.history_rows)
        metrics = StreamingMetrics(10_000)
        spent = {"featurize": 0.0, "learn": 0.0, "record": 0.0}
        batches = 0
        for start in range(0, len(rows), args.batch_size):
            chunk = rows[start:start + args.batch_size]
            users, items, labels = [r.user_id for r in chunk], [r.item_id for r in chunk], [r.label for r in chunk]
            features = [r.features for r in chunk]
            t0 = time.perf_counter()
            batch = featurizer.build(users, items, features, labels,
                                     history.rows_before_learning(users, items, labels, features))
            t1 = time.perf_counter()
            progressive_step(model, metrics, batch)
            t2 = time.perf_counter()
            history.after(users, items, labels, features)
            t3 = time.perf_counter()
            spent["featurize"] += t1 - t0
            spent["learn"] += t2 - t1
            spent["record"] += t3 - t2
            batches += 1
        row = {part: 1000 * seconds / batches for part, seconds in spent.items()}
        row["examples_per_second"] = len(rows) / sum(spent.values())
        if name == "dien":
            row["recurrent_only"] = recurrent_ms(args.batch_size, spec.history_length, 1 + len(spec.history_fields),
                                                 model.config.embedding.dim)
        results[name] = row
        parts = ", ".join(f"{part} {ms:.1f} ms" for part, ms in row.items() if part != "examples_per_second")
        print(f"{name}: per batch of {args.batch_size}: {parts}; {row['examples_per_second']:,.0f} ex/s", flush=True)
    write_result(args.name, {"rows": args.rows, "batch_size": args.batch_size, "models": results,
                             "data": "producers/behaviour_generator.py, default settings, seed 1"})


if __name__ == "__main__":
    main()
