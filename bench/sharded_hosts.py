"""Two ranks of one model on two network hosts (Linux network namespaces joined by a veth pair),
beside the same two ranks on loopback.

    sudo python bench/sharded_hosts.py --rows 200000 [--batch-size 4096] [--model wide_deep]

Each namespace has its own network stack and address (10.77.0.1 and 10.77.0.2): the ranks find
each other through torchrun's variables (``MASTER_ADDR`` = rank 0's address) and gloo sends every
exchange over the veth link, as it would between machines. Rank 0 runs in the first namespace,
rank 1 in the second; each is ``python -m streamrec.sharded_evaluation`` (its ``main``). Needs
root (``ip netns``); the namespaces are removed afterwards, also on failure. Both runs learn the
same rows of this project's generator, so their AUC must agree.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import SYNTHETIC_FIELDS, write_result  # noqa: E402

HOSTS = (("streamrec-h0", "streamrec-v0", "10.77.0.1"), ("streamrec-h1", "streamrec-v1", "10.77.0.2"))
PORT = 29517


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True)


def _make_hosts() -> None:
    for namespace, _link, _address in HOSTS:
        _ip("netns", "add", namespace)
    (ns0, link0, addr0), (ns1, link1, addr1) = HOSTS
    _ip("link", "add", link0, "type", "veth", "peer", "name", link1)
    for namespace, link, address in HOSTS:
        _ip("link", "set", link, "netns", namespace)
        _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", link)
        _ip("-n", namespace, "link", "set", link, "up")
        _ip("-n", namespace, "link", "set", "lo", "up")


def _remove_hosts() -> None:
    for namespace, _link, _address in HOSTS:
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True)  # takes its veth end along


def _run_ranks(log: Path, args: argparse.Namespace, report: Path, apart: bool) -> dict:
    command = [sys.executable, "-m", "streamrec.sharded_evaluation", str(log), "--format", "criteo",
               "--user-field", SYNTHETIC_FIELDS["user_field"], "--item-field", SYNTHETIC_FIELDS["item_field"],
               "--model", args.model, "--batch-size", str(args.batch_size), "--timeout-s", "120"]
    processes = []
    try:
        for rank, (namespace, link, _address) in enumerate(HOSTS):
            env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "MASTER_PORT": str(PORT),
                   "MASTER_ADDR": HOSTS[0][2] if apart else "127.0.0.1", "OMP_NUM_THREADS": "1"}
            if apart:
                env["GLOO_SOCKET_IFNAME"] = link
            prefix = ["ip", "netns", "exec", namespace] if apart else []
            extra = ["--report-json", str(report)] if rank == 0 else []
            processes.append(subprocess.Popen(prefix + command + extra, env=env, stdout=subprocess.DEVNULL))
        for process in processes:
            if process.wait(timeout=1800) != 0:
                raise SystemExit(f"a rank failed ({'two hosts' if apart else 'loopback'})")
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return json.loads(report.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--model", default="wide_deep")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("network namespaces need root: run with sudo")

    from streamrec.producers.generator import generate, write_stream

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "synthetic.tsv"
        write_stream(generate(args.rows, seed=7), log, seed=7)
        _remove_hosts()  # left over from an interrupted run
        _make_hosts()
        try:
            for name, apart in (("loopback", False), ("two_hosts", True)):
                report = _run_ranks(log, args, Path(tmp) / f"{name}.json", apart)
                results[name] = report
                print(f"{name:9s}: {report['examples_per_second']:8.0f} ex/s, AUC {report['auc']:.4f}, "
                      f"{report['bytes_sent_per_example']:.0f} B/example", flush=True)
        finally:
            _remove_hosts()
    results["auc_difference"] = abs(results["loopback"]["auc"] - results["two_hosts"]["auc"])
    results["speed_ratio_hosts_over_loopback"] = (results["two_hosts"]["examples_per_second"]
                                                  / results["loopback"]["examples_per_second"])
    write_result("sharded_hosts", {"model": args.model, "rows": args.rows, "batch_size": args.batch_size, **results})


if __name__ == "__main__":
    main()
