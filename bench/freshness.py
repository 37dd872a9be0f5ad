"""How fresh is the served model: from a click being produced to the scorer reflecting it.

A live stream: synthetic rows whose event times are re-based to the wall clock and replayed at
real-time pace (``--rate`` impressions per second; each click is produced at its own event
time, watermarks every 0.1 s). A trainer learns it (positives released at their click, deltas
every ``--delta-every-s``) and a Scorer follows the model in this process, recording every
swap: (wall time, the trainer's join watermark in the served state).

Every click produced before the served watermark is in the served model (the trainer flushes
the joiner into the model before each delta), so the latency of a click produced at wall time
T is the first swap at or after T whose watermark is >= T, minus T. Clicks arrive uniformly in
time, so sampling T every 10 ms over the steady part of the run gives their distribution.
Also reported: ``streamrec_served_model_age_seconds`` (now minus the newest label time
reflected), sampled the same way.

    python bench/freshness.py --rows 150000 --rate 5000
"""

from __future__ import annotations

import argparse
import bisect
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import synthetic_rows, write_result  # noqa: E402
from streamrec.consumers.trainer import Trainer, TrainerOptions  # noqa: E402
from streamrec.local_stack import start_stack, stop_stack  # noqa: E402
from streamrec.producers.readers import Row  # noqa: E402
from streamrec.producers.replay import ReplayOptions, replay  # noqa: E402
from streamrec.serving.scorer import Scorer, Served  # noqa: E402
from streamrec.stream.kafka_client import create_topics, make_producer  # noqa: E402
from streamrec.stream.settings import load_settings  # noqa: E402


def live_rows(rows: list[Row], rate: float) -> Iterator[Row]:
    """The rows with event times re-based so that the first one is 'now' when it is sent."""
    start = time.time()
    for index, row in enumerate(rows):
        yield replace(row, event_time=start + index / rate)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=150_000)
    parser.add_argument("--rate", type=float, default=5000.0, help="Impressions per second (real time).")
    parser.add_argument("--model", default="wide_deep")
    parser.add_argument("--delta-every-s", type=float, default=0.2)
    parser.add_argument("--window-s", type=float, default=10.0, help="Attribution window (event seconds).")
    parser.add_argument("--warmup-s", type=float, default=10.0, help="Seconds left out at the start.")
    parser.add_argument("--name", default="freshness")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        rows, _summary = synthetic_rows(Path(tmp), args.rows, seed=0)
        state = start_stack(home)
        try:
            settings = load_settings(namespace=f"fresh-{uuid.uuid4().hex[:6]}", home=home,
                                     kafka_bootstrap=state.kafka_bootstrap, redis_url=state.redis_url)
            create_topics(state.kafka_bootstrap, [settings.impressions_topic, settings.clicks_topic,
                                                  settings.dead_letter_topic], settings.partitions)
            trainer = Trainer(settings, TrainerOptions.from_settings(
                settings, model=args.model, positives="click", attribution_window_s=args.window_s,
                delta_every_s=args.delta_every_s, dense_every_s=5.0, publish_every_s=5.0,
                publish_every_examples=10**9, exit_at_end=True, metrics_port=None),
                kafka_bootstrap=state.kafka_bootstrap, redis_url=state.redis_url)
            swaps: list[tuple[float, Served]] = []
            scorer = Scorer(state.redis_url, settings.namespace, args.model, poll_s=0.5,
                            on_swap=lambda served: swaps.append((time.time(), served)))
            scorer.start()
            result: dict = {}
            train_thread = threading.Thread(target=lambda: result.update(report=trainer.run()), daemon=True)
            train_thread.start()
            time.sleep(3.0)  # the group join, so the stream is not read in a burst at the start
            producer = make_producer(state.kafka_bootstrap)
            started = time.time()
            try:
                produced = replay(live_rows(rows, args.rate), producer, impressions_topic=settings.impressions_topic,
                                  clicks_topic=settings.clicks_topic, dead_letter_topic=settings.dead_letter_topic,
                                  partitions=settings.partitions,
                                  options=ReplayOptions(speedup=1.0, watermark_every_s=0.1, click_delay_mean_s=1.0,
                                                        click_delay_max_s=5.0))
            finally:
                producer.close()
            ended = time.time()
            train_thread.join(120)
            scorer.close()
            trainer.close()
        finally:
            stop_stack(home)

    report = result.get("report", {})
    # steady part: after the warm-up, and only clicks the run had time to reflect
    times = [t for t, _s in swaps]
    marks = list(np.maximum.accumulate([s.watermark if s.watermark is not None else -np.inf for _t, s in swaps]))
    latencies, ages = [], []
    for produced_at in np.arange(started + args.warmup_s, ended - args.window_s, 0.01):
        first = bisect.bisect_left(marks, produced_at)
        if first < len(swaps):
            latencies.append(max(times[first], produced_at) - produced_at)
        at = bisect.bisect_right(times, produced_at) - 1
        if at >= 0 and swaps[at][1].event_time is not None:
            ages.append(produced_at - swaps[at][1].event_time)
    summary = {
        "click_to_served_p50_s": percentile(latencies, 50), "click_to_served_p99_s": percentile(latencies, 99),
        "click_to_served_max_s": max(latencies) if latencies else float("nan"),
        "served_model_age_p50_s": percentile(ages, 50), "served_model_age_p99_s": percentile(ages, 99),
        "samples": len(latencies), "swaps": len(swaps),
        "delta_swaps": sum(1 for _t, s in swaps if s.deltas_applied), "full_swaps": sum(1 for _t, s in swaps if not s.deltas_applied),
    }
    print(f"replayed {produced.impressions:,} impressions + {produced.clicks:,} clicks in real time "
          f"({produced.events_per_second:,.0f} events/s); trainer {report.get('examples', 0):,} examples, "
          f"AUC {report.get('auc', float('nan')):.4f}, {report.get('deltas_published', 0)} deltas, "
          f"{report.get('versions_published', 0)} versions")
    print(f"click produced -> scorer reflects it: p50 {summary['click_to_served_p50_s']:.3f}s  "
          f"p99 {summary['click_to_served_p99_s']:.3f}s  max {summary['click_to_served_max_s']:.3f}s "
          f"({summary['samples']:,} samples, {summary['swaps']} swaps)")
    print(f"served model age: p50 {summary['served_model_age_p50_s']:.3f}s  p99 {summary['served_model_age_p99_s']:.3f}s")
    write_result(args.name, {
        "rows": args.rows, "rate": args.rate, "model": args.model, "delta_every_s": args.delta_every_s,
        "window_s": args.window_s, "positives": "click", "data": "synthetic (producers/generator.py, seed 0), "
        "event times re-based to the wall clock", **summary,
        "trainer": {k: report.get(k) for k in ("examples", "auc", "deltas_published", "versions_published",
                                               "examples_per_second")},
    })


if __name__ == "__main__":
    main()
