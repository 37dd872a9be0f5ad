"""What expiring behaviour histories by event time costs a sequence model, and what it saves.

    python bench/history_ttl.py --rows 100000 [--ttls 0,300,60] [--model din]

Streams: producers/behaviour_generator.py at the three settings bench/sequence_learning.py uses
(each differs from the generator's defaults in every knob), and with ``--long-tail`` the
long-tail stream of producers/long_tail_generator.py with churn (users drawn from a Zipf law over
a million values, most seen once: what histories of one-off users cost). Rows are 0.01 s of event time apart
(the readers' default), so 100k rows span 1,000 s. For each ``tables.ttl_seconds`` (0: histories
kept for ever, bounded only by their LRU of a million keys), one ``evaluate`` pass of the model
with ``--history-field C3``: AUC, the share of the reachable gap captured, ``(AUC - blind) /
(oracle - blind)``, the keys the histories hold at the end, the keys expired, the bytes of the
histories' checkpoint state (what every version stores), and examples per second. The setting
expires keyed table rows too; each ttl also runs with the histories alone expiring (the tables'
rows kept), to tell the two apart.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import write_result  # noqa: E402
from bench.sequence_learning import SETTINGS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--model", default="din")
    parser.add_argument("--ttls", default="0,300,60", help="tables.ttl_seconds values, 0 first (the reference)")
    parser.add_argument("--streams", default=",".join(SETTINGS))
    parser.add_argument("--long-tail", action="store_true", help="also the churning long-tail stream")
    parser.add_argument("--name", default="history_ttl")
    args = parser.parse_args()
    from streamrec import evaluation
    from streamrec.evaluation import evaluate_rows
    from streamrec.models import history_ttl_seconds
    from streamrec.producers.behaviour_generator import BehaviourSettings, generate_behaviour
    from streamrec.producers.generator import write_stream
    from streamrec.producers.readers import ReaderOptions, read_rows
    from streamrec.stream.feature_spec import SpecOptions

    ttls = [float(t) for t in args.ttls.split(",")]
    from streamrec.producers.long_tail_generator import LongTailSettings, generate_long_tail

    results = {}
    names = args.streams.split(",") + (["long-tail-churn"] if args.long_tail else [])
    for name in names:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / f"{name}.tsv"
            if name in SETTINGS:
                stream = generate_behaviour(args.rows, args.seed, BehaviourSettings(**SETTINGS[name]))
                settings = SETTINGS[name]
            else:
                settings = {"values": 1_000_000, "zipf": 1.05, "churn": 4.0}
                stream = generate_long_tail(args.rows, args.seed, LongTailSettings(**settings))
            summary = write_stream(stream, out, args.seed)
            rows = list(read_rows(out, "criteo", ReaderOptions(user_field="C1", item_field="C2")))
        # the long tail's truth reads no history: its reachable gap is the oracle over the no-skill 0.5
        oracle, blind = summary["oracle_auc"], summary.get("blind_auc", 0.5)
        span = rows[-1].event_time - rows[0].event_time
        print(f"== {name}: {len(rows):,} rows over {span:,.0f} s of event time; oracle {oracle:.4f}, "
              f"history-blind {blind:.4f}", flush=True)
        runs = {}
        for ttl, histories_only in [(t, only) for t in ttls for only in ((False, True) if t else (False,))]:
            cpu = time.process_time()
            if histories_only:  # the tables keep every row; only the histories see the ttl
                evaluation.history_ttl_seconds = lambda *_args, ttl=ttl: ttl
            try:
                report, _ = evaluate_rows(rows, args.model, spec_options=SpecOptions(history_fields=("C3",)),
                                          model_settings={"tables.ttl_seconds": f"{ttl:g}"}
                                          if ttl and not histories_only else None)
            finally:
                evaluation.history_ttl_seconds = history_ttl_seconds
            run = {"auc": report["auc"], "auc_window": report["auc_window"], "logloss": report["logloss"],
                   "gap_captured": (report["auc"] - blind) / (oracle - blind),
                   "history_keys": report["history"]["keys"], "history_expired": report["history"]["expired"],
                   "history_state_bytes": report["history"]["state_bytes"],
                   "examples_per_second": report["examples_per_second"],
                   "cpu_s_per_1k": 1000 * (time.process_time() - cpu) / len(rows)}
            label = f"ttl {ttl:g}" + (" (histories only)" if histories_only else "")
            runs[label] = run
            print(f"  {label:>26}: AUC {run['auc']:.4f}  gap {run['gap_captured']:5.1%}  "
                  f"keys {run['history_keys']:,} (expired {run['history_expired']:,})  "
                  f"state {run['history_state_bytes'] / 1e6:.2f} MB  {run['examples_per_second']:,.0f} ex/s",
                  flush=True)
        results[name] = {"rows": len(rows), "span_s": span, "oracle_auc": oracle, "blind_auc": blind,
                         "settings": settings, "runs": runs}
    write_result(args.name, {"rows": args.rows, "seed": args.seed, "model": args.model, "ttls": ttls,
                             "streams": results, "data": "producers/behaviour_generator.py (settings per stream)"
                                     + ("; producers/long_tail_generator.py" if args.long_tail else "")})


if __name__ == "__main__":
    main()
