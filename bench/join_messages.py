"""What a message costs the trainer worker's joiner: decode, validate, join and release, by the
replay's watermark policy (which decides how many events a message holds).

    python bench/join_messages.py --rows 100000 [--agrawal] [--repeats 7]

The replay's output is recorded in memory (no broker), then fed to a ``Joiner`` message by
message, as the trainer worker does (``offer_message``, ``advance``, ``take``), once per policy
and encoding, the settings interleaved ``--repeats`` times in one process so that the machine's
swings fall on all of them alike; reported are the medians of the main thread's CPU seconds per
1,000 labelled examples, and the messages and events per message. Policies: the watermark every
5 s of event time alone (``watermark_min_rows`` 0: what the replay did before), and the unpaced
default (``events_per_message`` x partitions rows between watermarks at least).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import write_agrawal_criteo, write_result  # noqa: E402

PARTITIONS = 4


class _Recorder:
    """A producer that keeps what it is handed."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, int | None]] = []

    def send(self, topic: str, value: bytes, key: bytes | None = None, partition: int | None = None) -> None:
        self.sent.append((topic, value, partition))

    def flush(self, timeout_s: float = 30.0) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--agrawal", action="store_true", help="River's Agrawal as a Criteo log, not the project's stream")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--name", default="join_messages")
    args = parser.parse_args()
    from streamrec.consumers.joiner import Joiner
    from streamrec.producers.column_replay import replay_columns
    from streamrec.producers.columns import read_columns
    from streamrec.producers.generator import generate, write_stream
    from streamrec.producers.readers import ReaderOptions, read_rows
    from streamrec.producers.replay import ReplayOptions, replay, watermark_min_rows

    options = ReaderOptions(user_field="C1", item_field="C2")
    topics = {"impressions_topic": "imp", "clicks_topic": "clk", "dead_letter_topic": "dlq", "partitions": PARTITIONS}
    recorded: dict[str, list[tuple[int, str, bytes]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "stream.tsv"
        if args.agrawal:
            source = write_agrawal_criteo(data, args.rows, seed=0)["source"]
        else:
            write_stream(generate(args.rows, seed=0), data, seed=0)
            source = "synthetic (producers/generator.py, seed 0)"
        for encoding in ("json", "columns"):
            for policy, min_rows in (("watermarks by time alone", 0), ("unpaced default", None)):
                recorder = _Recorder()
                replay_options = ReplayOptions(encoding=encoding, watermark_min_rows=min_rows)
                if encoding == "columns":
                    replay_columns(read_columns(data, "criteo", options), recorder, options=replay_options, **topics)
                else:
                    replay(read_rows(data, "criteo", options), recorder, options=replay_options, **topics)
                recorded[f"{encoding}, {policy}"] = [(p, "impressions" if t == "imp" else "clicks", v)
                                                     for t, v, p in recorder.sent if t in ("imp", "clk")]
    cpu: dict[str, list[float]] = {key: [] for key in recorded}
    examples: dict[str, int] = {}
    for repeat in range(args.repeats):
        for key, messages in recorded.items():
            joiner, released = Joiner(30.0, 1_000_000), 0
            started = time.thread_time()
            for partition, kind, value in messages:
                joiner.offer_message(partition, kind, value)
                joiner.advance([partition])
                released += len(joiner.take())
            cpu[key].append(time.thread_time() - started)
            examples[key] = released
        print(f"round {repeat + 1}/{args.repeats}", flush=True)
    results = {}
    for key, messages in recorded.items():
        impressions = [m for m in messages if m[1] == "impressions"]
        per_1k = 1000 * statistics.median(cpu[key]) / examples[key]
        results[key] = {"messages": len(messages), "impression_messages": len(impressions),
                        "examples": examples[key], "cpu_s_per_1k_examples": per_1k,
                        "cpu_s_runs": cpu[key]}
        print(f"{key:>40}: {len(messages):6,} messages, {per_1k:.4f} CPU-s per 1k examples "
              f"(runs {', '.join(f'{c:.2f}' for c in cpu[key])})")
    for encoding in ("json", "columns"):
        ratio = (results[f"{encoding}, unpaced default"]["cpu_s_per_1k_examples"]
                 / results[f"{encoding}, watermarks by time alone"]["cpu_s_per_1k_examples"])
        results[f"{encoding}: unpaced default / by time alone"] = ratio
        print(f"{encoding}: the unpaced default costs {ratio:.2f}x")
    write_result(args.name, {"rows": args.rows, "data": source, "partitions": PARTITIONS, "repeats": args.repeats,
                             "min_rows_default": watermark_min_rows(ReplayOptions(), PARTITIONS),
                             "results": results})


if __name__ == "__main__":
    main()
