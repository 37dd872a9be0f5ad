"""How fast a pointer move (rollback, unpin, pin, promote) reaches scorers while two trainers learn.

    python bench/swap_latency.py --rows 200000 --rate 5000 --ops 24

A paced replay keeps an `lr` and a `wide_deep` trainer busy (`streamrec train`, a version every
2 s, deltas every 0.5 s), a `streamrec serve` per model answers a steady trickle of /predict
requests, and this script moves the live pointer of one model after the other through the same
store calls `streamrec models rollback / unpin / pin / promote` make. Each move is timed from just
before the call until that model's scorer serves the move's target as the store requires: a
pinned or rolled-back version with no deltas applied; after an unpin, the target or a newer
version the trainer published since. Two times per move: when the scorer began serving it (the
`swapped_at` its /healthz reports: the swap itself) and when this script saw it on /healthz (that
plus the polling's own delay). The replay runs as its own `streamrec replay` process. On this
2-core machine the trainers, scorers, replay, broker and Redis share the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis  # noqa: E402

from bench._common import write_result  # noqa: E402
from streamrec.local_stack import start_stack, stop_stack  # noqa: E402
from streamrec.producers.generator import generate, write_stream  # noqa: E402
from streamrec.stream.kafka_client import create_topics  # noqa: E402
from streamrec.versions.store import VersionStore  # noqa: E402

MODELS = ("lr", "wide_deep")
OPERATIONS = ("rollback", "unpin", "pin", "unpin", "promote_previous", "unpin")


def _healthz(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


def _start(args: list[str], env: dict[str, str], folder: Path, name: str, key: str) -> tuple[subprocess.Popen, int]:
    ready = folder / f"{name}.json"
    log = open(folder / f"{name}.log", "w")  # noqa: SIM115 - the child holds it
    process = subprocess.Popen([sys.executable, "-m", "streamrec", *args, "--ready-file", str(ready)], env=env,
                               stdout=log, stderr=subprocess.STDOUT)
    log.close()
    deadline = time.monotonic() + 120
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not start: {(folder / f'{name}.log').read_text()[-2000:]}")
        time.sleep(0.05)
    return process, int(json.loads(ready.read_text())[key])


def _move(store: VersionStore, operation: str) -> None:
    live, head, _pinned = store.pointers()
    if operation == "rollback":
        target = store.previous_promoted(live)
        store.set_live(target if target is not None else live, pin=True, kind="rollback", reason="bench")
    elif operation == "pin":
        store.set_live(live, pin=True, kind="pin", reason="bench")
    elif operation == "promote_previous":
        target = store.previous_promoted(head)
        store.set_live(target if target is not None else head, pin=True, kind="promote", reason="bench")
    else:
        store.unpin()


def _served_as_required(store: VersionStore, port: int, target: int) -> dict | None:
    """The scorer's /healthz once the move's target is served as the store requires: a pinned
    version exactly (no deltas); after an unpin, the target or a newer version the trainer has
    published since (scorers follow it). None until then."""
    health = _healthz(port)
    if health is None:
        return None
    live, head, pinned = store.pointers()
    served = health.get("version")
    if pinned:
        ok = served == live == target and health.get("deltas_applied", 0) == 0
    else:
        ok = served is not None and served >= target and (served == live or live == head)
    return health if ok else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rate", type=float, default=5000.0, help="Replay pace, events/s.")
    parser.add_argument("--ops", type=int, default=24, help="Pointer moves, alternating between the models.")
    parser.add_argument("--every-s", type=float, default=1.5, help="Pause between moves.")
    parser.add_argument("--name", default="swap_latency")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = folder / "stream.tsv"
        write_stream(generate(args.rows, seed=0), data, seed=0)
        home = folder / "home"
        state = start_stack(home)
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
        env.update({"STREAMREC_KAFKA_BOOTSTRAP": state.kafka_bootstrap, "STREAMREC_REDIS_URL": state.redis_url,
                    "STREAMREC_NAMESPACE": "swap", "STREAMREC_HOME": str(home)})
        processes: list[subprocess.Popen] = []
        stop = threading.Event()
        try:
            create_topics(state.kafka_bootstrap, ["swap.impressions", "swap.clicks", "swap.dead-letter"], 2)

            replayer = subprocess.Popen(
                [sys.executable, "-m", "streamrec", "replay", str(data), "--format", "criteo", "--user-field", "C1",
                 "--item-field", "C2", "--rate", str(args.rate), "--partitions", "2"],
                env=env, stdout=subprocess.DEVNULL, stderr=open(folder / "replay.log", "w"))  # noqa: SIM115
            processes.append(replayer)
            ports = {}
            for model in MODELS:
                trainer, _ = _start(["train", "--model", model, "--metrics-port", "0", "--publish-every-s", "2"],
                                    env, folder, f"train-{model}", "metrics_port")
                processes.append(trainer)
            client = redis.Redis.from_url(state.redis_url)
            stores = {model: VersionStore(client, "swap", model) for model in MODELS}
            deadline = time.monotonic() + 180
            while any(len(s.versions()) < 3 for s in stores.values()):
                if time.monotonic() > deadline:
                    raise RuntimeError("the trainers did not publish three versions each")
                time.sleep(0.5)
            for model in MODELS:
                scorer, ports[model] = _start(["serve", "--model", model, "--port", "0"], env, folder,
                                              f"serve-{model}", "port")
                processes.append(scorer)

            def traffic() -> None:
                body = json.dumps({"events": [{"user_id": "u1", "item_id": "a9", "features": {"C3": "x"}}]}).encode()
                while not stop.is_set():
                    for port in ports.values():
                        try:
                            urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/predict", body),
                                                   timeout=5).read()
                        except OSError:
                            pass
                    time.sleep(0.01)

            threading.Thread(target=traffic, daemon=True).start()
            moves = []
            for i in range(args.ops):
                model = MODELS[i % len(MODELS)]
                operation = OPERATIONS[(i // len(MODELS)) % len(OPERATIONS)]
                started, started_wall = time.perf_counter(), time.time()
                _move(stores[model], operation)
                target = stores[model].live()
                seen = swapped = None
                while time.perf_counter() - started < 15:
                    health = _served_as_required(stores[model], ports[model], target)
                    if health is not None:
                        seen = time.perf_counter() - started
                        swapped = max(0.0, float(health["swapped_at"]) - started_wall)
                        break
                    time.sleep(0.005)
                moves.append({"model": model, "operation": operation, "seconds": swapped, "seen_s": seen})
                shown = ("did not arrive in 15 s" if seen is None
                         else f"swapped {swapped * 1000:.0f} ms, seen {seen * 1000:.0f} ms")
                print(f"{model:>9} {operation:<16} {shown}")
                time.sleep(args.every_s)
        finally:
            stop.set()
            for process in processes:
                process.terminate()
            for process in processes:
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            stop_stack(home)
    missed = sum(m["seconds"] is None for m in moves)

    def quantile(key: str, q: float) -> float:
        times = sorted(m[key] for m in moves if m[key] is not None)
        return times[min(len(times) - 1, int(q * len(times)))] if times else float("nan")

    for key, what in (("seconds", "swapped"), ("seen_s", "seen on /healthz")):
        print(f"{len(moves)} moves, {what}: p50 {quantile(key, 0.5) * 1000:.0f} ms, "
              f"p99 {quantile(key, 0.99) * 1000:.0f} ms, max {quantile(key, 1.0) * 1000:.0f} ms")
    print(f"{missed} did not arrive within 15 s")
    write_result(args.name, {"rows": args.rows, "rate": args.rate, "models": list(MODELS), "moves": moves,
                             "p50_s": quantile("seconds", 0.5), "p99_s": quantile("seconds", 0.99),
                             "max_s": quantile("seconds", 1.0), "seen_p50_s": quantile("seen_s", 0.5),
                             "seen_p99_s": quantile("seen_s", 0.99), "missed": missed,
                             "data": "synthetic (producers/generator.py, seed 0)"})


if __name__ == "__main__":
    main()
