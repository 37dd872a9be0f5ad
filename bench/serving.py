"""``/predict`` latency and throughput of ``streamrec serve``, steady and while versions swap.

A wide_deep model trained on synthetic rows is published to the embedded Redis; ``streamrec
serve`` runs as its own process; client threads in this process post batches of events for a
few seconds per phase and record every request's latency:

* steady, batches of 1 and of ``--batch`` events;
* swapping: the same load while this process keeps learning and publishes a delta every 0.2 s
  (dense weights included) and a full version every 2 s, which the server applies under load.

Also the in-process ``Scorer.predict`` time for the same batch, to separate HTTP from scoring.
Server and clients share this machine's cores, so absolute numbers are a floor; compare phases.

    python bench/serving.py --seconds 8 --clients 4 --batch 100
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import synthetic_rows, write_result  # noqa: E402
from streamrec.evaluation import batched
from streamrec.local_stack import start_stack, stop_stack  # noqa: E402
from streamrec.models import create_model  # noqa: E402
from streamrec.serving.scorer import Scorer  # noqa: E402
from streamrec.stream.feature_spec import SpecOptions  # noqa: E402
from streamrec.stream.featurizer import Featurizer  # noqa: E402
from streamrec.stream.redis_connection import connect
from streamrec.versions.store import VersionStore  # noqa: E402

NAMESPACE = "bench-serving"


def load(url: str, payloads: list[list[dict]], clients: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    errors = [0]
    stop = time.monotonic() + seconds

    def client(offset: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            i = offset
            while time.monotonic() < stop:
                body = payloads[i % len(payloads)]
                started = time.perf_counter()
                response = http.post("/predict", json={"events": body})
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200:
                    errors[0] += 1
                i += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - began
    batch = len(payloads[0])
    return {"requests": len(latencies), "errors": errors[0], "p50_ms": float(np.percentile(latencies, 50)) * 1e3,
            "p99_ms": float(np.percentile(latencies, 99)) * 1e3, "requests_per_s": len(latencies) / wall,
            "predictions_per_s": len(latencies) * batch / wall, "batch": batch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=8.0, help="Seconds per phase.")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--name", default="serving")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        rows, _summary = synthetic_rows(Path(tmp), args.rows, seed=0)
        spec = SpecOptions().infer([r.features for r in rows[:1000]])
        featurizer = Featurizer(spec)
        batches = [featurizer.build([r.user_id for r in c], [r.item_id for r in c], [r.features for r in c],
                                    [r.label for r in c]) for c in batched(rows, 512)]
        model = create_model("wide_deep", spec)
        for batch in batches[: len(batches) // 2]:
            model.learn(batch)
        model.delta_bytes(include_dense=True)
        events = [{"user_id": r.user_id, "item_id": r.item_id, "features": r.features} for r in rows[-5000:]]
        big = [events[i : i + args.batch] for i in range(0, len(events) - args.batch, args.batch)]
        single = [[e] for e in events[:500]]

        state = start_stack(home)
        server = None
        try:
            store = VersionStore(connect(state.redis_url), NAMESPACE, "wide_deep")
            head = store.publish(parent=None, meta={"examples_seen": 0, "lineage": "bench", "delta_seq": 0,
                                                    "event_time": time.time()},
                                 weights=model.to_bytes(), trainer=b"", joiner=b"{}", keep=5)
            # in-process scoring time, for comparison with HTTP
            with Scorer(state.redis_url, NAMESPACE, "wide_deep", follow=False) as scorer:
                for payload in big[:20]:
                    scorer.predict(payload)
                timings = []
                for payload in big[:200]:
                    started = time.perf_counter()
                    scorer.predict(payload)
                    timings.append(time.perf_counter() - started)
            in_process = {"p50_ms": float(np.percentile(timings, 50)) * 1e3,
                          "p99_ms": float(np.percentile(timings, 99)) * 1e3}
            print(f"in-process Scorer.predict({args.batch} events): p50 {in_process['p50_ms']:.2f} ms, "
                  f"p99 {in_process['p99_ms']:.2f} ms")

            ready = Path(tmp) / "ready.json"
            env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
            env.update({"STREAMREC_REDIS_URL": state.redis_url, "STREAMREC_NAMESPACE": NAMESPACE})
            server = subprocess.Popen([sys.executable, "-m", "streamrec", "serve", "--model", "wide_deep", "--port", "0",
                                       "--ready-file", str(ready)], env=env, stdout=subprocess.DEVNULL)
            while not ready.exists():
                if server.poll() is not None:
                    raise SystemExit("streamrec serve exited")
                time.sleep(0.05)
            url = f"http://127.0.0.1:{json.loads(ready.read_text())['port']}"
            load(url, big, args.clients, 1.0)  # warm-up
            phases = {"steady_single": load(url, single, args.clients, args.seconds),
                      "steady_batch": load(url, big, args.clients, args.seconds)}

            swapping = {"deltas": 0, "versions": 0}
            stop = threading.Event()

            def publisher() -> None:
                nonlocal head
                seq, last_version, step = 0, time.monotonic(), len(batches) // 2
                while not stop.is_set():
                    model.learn(batches[step % len(batches)])
                    step += 1
                    seq += 1
                    store.publish_delta(lineage="bench", seq=seq, meta={"event_time": time.time()},
                                        weights=model.delta_bytes(include_dense=True), ttl_s=120)
                    swapping["deltas"] += 1
                    if time.monotonic() - last_version >= 2.0:
                        head = store.publish(parent=head, meta={"examples_seen": step, "lineage": "bench",
                                                                "delta_seq": seq, "event_time": time.time()},
                                             weights=model.to_bytes(), trainer=b"", joiner=b"{}", keep=5)
                        swapping["versions"] += 1
                        last_version = time.monotonic()
                    stop.wait(0.2)

            thread = threading.Thread(target=publisher)
            thread.start()
            try:
                phases["swapping_batch"] = load(url, big, args.clients, args.seconds)
            finally:
                stop.set()
                thread.join()
            served = httpx.get(f"{url}/healthz").json()
        finally:
            if server is not None:
                server.send_signal(signal.SIGTERM)
                try:
                    server.wait(15)
                except subprocess.TimeoutExpired:
                    server.kill()
            stop_stack(home)

    for name, phase in phases.items():
        print(f"{name:>15}: batch {phase['batch']:>4}  p50 {phase['p50_ms']:6.2f} ms  p99 {phase['p99_ms']:6.2f} ms  "
              f"{phase['requests_per_s']:8,.0f} req/s  {phase['predictions_per_s']:10,.0f} predictions/s  "
              f"errors {phase['errors']}")
    ratio = phases["swapping_batch"]["p99_ms"] / phases["steady_batch"]["p99_ms"]
    print(f"while swapping ({swapping['deltas']} deltas, {swapping['versions']} versions published; the server "
          f"ended on v{served['version']} + {served['deltas_applied']} deltas): p99 x{ratio:.2f} of steady")
    write_result(args.name, {"clients": args.clients, "seconds_per_phase": args.seconds, "model": "wide_deep",
                             "data": "synthetic (producers/generator.py, seed 0)", "in_process": in_process,
                             "phases": phases, "swapping": swapping, "swap_p99_over_steady": ratio,
                             "served_at_end": served})


if __name__ == "__main__":
    main()
