"""`streamrec models ...` against a real Redis: list, show, promote, rollback, pin, unpin."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import redis

from streamrec.versions.meta import VersionMeta
from streamrec.versions.store import VersionStore

pytestmark = pytest.mark.integration


def _cli(stack, namespace, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    env.update({"STREAMREC_REDIS_URL": stack.redis_url, "STREAMREC_NAMESPACE": namespace})
    return subprocess.run([sys.executable, "-m", "streamrec", "models", "--model", "lr", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def test_models_commands_move_only_the_pointer(stack, namespace):
    store = VersionStore(redis.Redis.from_url(stack.redis_url), namespace, "lr")
    parent = None
    for n in range(1, 5):
        parent = store.publish(parent=parent, meta=VersionMeta(examples_seen=100 * n, metrics={"auc": 0.6 + n / 100}),
                               weights=b"w", quality_state=b"t", source_state=b"{}", keep=3)
    listed = json.loads(_cli(stack, namespace, "list", "--json").stdout)
    assert [v["version"] for v in listed["versions"]] == [4, 3, 2]
    assert listed["live"] == listed["head"] == 4 and not listed["pinned"]
    assert listed["versions"][0]["examples_seen"] == 400 and listed["versions"][1]["parent"] == 2

    assert json.loads(_cli(stack, namespace, "show", "3").stdout)["metrics"]["auc"] == pytest.approx(0.63)

    result = _cli(stack, namespace, "rollback")
    assert result.returncode == 0, result.stderr
    assert store.live() == 3 and store.pinned()
    store.publish(parent=4, meta=VersionMeta(), weights=b"w", quality_state=b"t", source_state=b"{}", keep=3)
    assert store.live() == 3 and store.head() == 5  # pinned: the trainer's new version does not go live

    announcements = store.client.pubsub()
    announcements.subscribe(store.keys.announce)
    assert announcements.get_message(timeout=2)["type"] == "subscribe"
    unpinned = _cli(stack, namespace, "unpin")
    assert unpinned.returncode == 0 and "live v5" in unpinned.stdout
    # the newest version (promoted by the gate) goes live at once, and scorers are told
    assert store.live() == 5 and not store.pinned()
    message = announcements.get_message(timeout=5)
    assert message is not None and json.loads(message["data"])["live"] == 5
    announcements.close()
    assert [e["kind"] for e in store.events()[-2:]] == ["promote", "unpin"]  # on the timeline
    store.publish(parent=5, meta=VersionMeta(), weights=b"w", quality_state=b"t", source_state=b"{}", keep=3)
    assert store.live() == 6 and not store.pinned()

    assert _cli(stack, namespace, "promote", "5").returncode == 0
    assert store.live() == 5 and not store.pinned()
    assert _cli(stack, namespace, "pin", "--reason", "freeze for the launch").returncode == 0
    assert store.live() == 5 and store.pinned()
    pinned = store.events()[-1]  # who and why go on the timeline
    assert pinned["kind"] == "pin" and pinned["reason"] == "freeze for the launch"
    assert pinned["by"].startswith("cli ") and "@" in pinned["by"]

    missing = _cli(stack, namespace, "promote", "1")
    assert missing.returncode == 1 and "no version 1" in missing.stderr
    assert store.live() == 5
    listed = _cli(stack, namespace, "list")
    assert "live v5 (pinned)" in listed.stdout
    assert "vNone" not in listed.stdout and "parent" in listed.stdout.splitlines()[1]  # a header row
    assert "champion" not in _cli(stack, namespace, "promote", "6").stdout  # promote moves the live pointer only


def test_annotate_describes_and_tags_a_version(stack, namespace):
    store = VersionStore(redis.Redis.from_url(stack.redis_url), namespace, "lr")
    for parent in (None, 1):
        store.publish(parent=parent, meta=VersionMeta(examples_seen=100), weights=b"w", quality_state=b"t",
                      source_state=b"{}", keep=3)
    done = _cli(stack, namespace, "annotate", "1", "-m", "before the feature change", "--tag", "baseline",
                "--tag", "exp:42")
    assert done.returncode == 0, done.stderr
    assert store.annotation(1)["description"] == "before the feature change"
    assert store.annotation(1)["tags"] == ["baseline", "exp:42"]
    listed = _cli(stack, namespace, "list").stdout
    assert "before the feature change #baseline #exp:42" in listed.splitlines()[-1]  # v1, the oldest row
    assert json.loads(_cli(stack, namespace, "show", "1").stdout)["annotation"]["tags"] == ["baseline", "exp:42"]
    assert json.loads(_cli(stack, namespace, "list", "--json").stdout)["versions"][0]["annotation"] is None
    assert store.events()[-1]["kind"] == "annotate" and "#baseline" in store.events()[-1]["reason"]
    # again: replaced, not merged
    assert _cli(stack, namespace, "annotate", "1", "--tag", "rolled-back").returncode == 0
    assert store.annotation(1)["tags"] == ["rolled-back"] and store.annotation(1)["description"] == ""
    bad = _cli(stack, namespace, "annotate", "1", "--tag", "no spaces")
    assert bad.returncode != 0 and "--tag" in bad.stderr
    nothing = _cli(stack, namespace, "annotate", "1")
    assert nothing.returncode != 0 and "--description or --tag" in nothing.stderr
    missing = _cli(stack, namespace, "annotate", "9", "-m", "x")
    assert missing.returncode != 0 and "no version 9" in missing.stderr
