"""The dashboard's actions, model panel and stored history, against a real Redis: actions need the
token and the action header, move the pointers exactly as `streamrec models` does and put who and
why on the timeline; the page shows annotations and its buttons work in a real browser; the
sampled points outlive a restart of the dashboard."""

from __future__ import annotations

import time

import httpx
import pytest
import redis

from streamrec.dashboard import Collector
from streamrec.dashboard_history import HistorySettings
from streamrec.versions.meta import GateRecord, VersionMeta
from streamrec.versions.store import VersionStore, champion
from tests.streams import browser_page, cli_env, cli_server, wait_for

pytestmark = pytest.mark.integration
TOKEN = "s3cret-token"


def _versions(stack, namespace, count=4) -> VersionStore:
    store = VersionStore(redis.Redis.from_url(stack.redis_url), namespace, "lr")
    parent = None
    for n in range(1, count + 1):
        gate = GateRecord(promoted=n != 3, reason="passed" if n != 3 else "auc_drop", detail="")
        parent = store.publish(parent=parent, meta=VersionMeta(examples_seen=1000 * n, gate=gate), weights=b"w",
                               quality_state=b"t", source_state=b"{}", keep=10, promote=n != 3)
    return store


def _post(url, body, token=TOKEN, header=True):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if header:
        headers["X-Streamrec-Action"] = "1"
    return httpx.post(f"{url}/api/actions", json=body, headers=headers, timeout=10)


def test_actions_need_the_token_and_log_who_and_why(stack, namespace, tmp_path):
    store = _versions(stack, namespace)
    assert store.live() == 4 and store.head() == 4
    env = cli_env(stack, namespace)
    with cli_server(env, tmp_path, "dashboard", "--interval-s", "0.2") as url:  # no token: read-only
        body = httpx.get(f"{url}/api/metrics", timeout=10).json()
        assert body["actions"]["enabled"] is False and "--auth-token" in body["actions"]["why_not"]
        refused = _post(url, {"model": "lr", "action": "pin", "by": "ana", "reason": "x"}, token=None)
        assert refused.status_code == 403 and "--auth-token" in refused.json()["error"]
        assert store.live() == 4 and not store.pinned()

    with cli_server(env, tmp_path, "dashboard", "--interval-s", "0.2", "--auth-token", TOKEN) as url:
        def panel():
            got = httpx.get(f"{url}/api/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10).json()
            return got["models"].get("lr")

        wait_for(lambda: panel() is not None, 20, "the model panel", 0.1)
        rollback = {"model": "lr", "action": "rollback", "version": 2, "by": "ana", "reason": "bad calibration"}
        assert _post(url, rollback, token=None).status_code == 401
        assert _post(url, rollback, token="wrong").status_code == 401
        no_header = _post(url, rollback, header=False)
        assert no_header.status_code == 403 and "X-Streamrec-Action" in no_header.json()["error"]
        for bad, key in (({**rollback, "version": "2"}, "version"), ({**rollback, "reason": " "}, "reason"),
                         ({**rollback, "model": "nope"}, "model"), ({**rollback, "action": "delete"}, "action"),
                         ({**rollback, "by": ""}, "by")):
            answer = _post(url, bad)
            assert answer.status_code == 400 and answer.json()["error"].startswith(key), (bad, answer.text)
        assert store.live() == 4 and not store.pinned()  # nothing moved on a refused request

        done = _post(url, rollback)
        assert done.status_code == 200 and done.json()["live"] == 2 and done.json()["pinned"] is True
        assert store.live() == 2 and store.pinned()
        event = store.events()[-1]
        assert (event["kind"], event["version"], event["reason"]) == ("rollback", 2, "bad calibration")
        assert event["by"] == "dashboard ana (127.0.0.1)"

        assert _post(url, {"model": "lr", "action": "unpin", "by": "ana", "reason": "fixed"}).json()["live"] == 4
        assert not store.pinned()
        missing = _post(url, {"model": "lr", "action": "promote", "version": 9, "by": "ana", "reason": "try"})
        assert missing.status_code == 409 and "no version 9" in missing.json()["error"]
        assert champion(store.client, namespace) is None
        named = _post(url, {"model": "lr", "action": "champion", "by": "bo", "reason": "best offline AUC"})
        assert named.status_code == 200 and champion(store.client, namespace) == "lr"
        assert store.events()[-1]["kind"] == "champion" and store.events()[-1]["by"] == "dashboard bo (127.0.0.1)"

        note = {"model": "lr", "action": "annotate", "version": 3, "by": "bo", "description": "held: new features",
                "tags": ["exp:7", "features"]}
        assert _post(url, {**note, "tags": ["no spaces"]}).status_code == 400
        assert _post(url, note).status_code == 200
        assert store.annotation(3)["tags"] == ["exp:7", "features"]
        wait_for(lambda: (panel()["versions"][1]["annotation"] or {}).get("description") == "held: new features",
                 10, "the annotation in the model panel", 0.1)
        shown = panel()
        assert [v["version"] for v in shown["versions"]] == [4, 3, 2, 1]
        assert shown["versions"][1]["promoted"] is False and shown["versions"][1]["gate_reason"] == "auc_drop"
        assert (shown["live"], shown["head"], shown["pinned"]) == (4, 4, False)


class _FixedSource:
    """Two workers whose numbers the test sets; the history, not the scraping, is under test."""

    name = "workers"

    def __init__(self) -> None:
        self.examples = 0.0

    def sample(self):
        self.examples += 100
        trainer = {"role": "trainer", "model": "lr", "worker": "w1", "metrics_url": "http://127.0.0.1:1/metrics"}
        return [(trainer, {"streamrec_examples_trained_total": self.examples}, None)]


def test_the_sampled_history_outlives_a_restart_and_one_dashboard_writes_it(stack, namespace):
    client = redis.Redis.from_url(stack.redis_url)
    settings = HistorySettings(fine_points=5, coarse_step_s=0.0, coarse_points=100)
    first = Collector(_FixedSource(), client, namespace, interval_s=0.05, history=settings)
    second = Collector(_FixedSource(), client, namespace, interval_s=0.05, history=settings)
    for _ in range(12):
        first.tick()
        second.tick()  # a second dashboard on the namespace: shows its points, stores none
        time.sleep(0.01)
    stored = first.history.load("fine")
    # Redis trims a stream in whole blocks, so all twelve are still there, each once
    assert [rows["trainer/lr/w1"][5]["examples"] for _t, rows in stored] == [100.0 * n for n in range(1, 13)]
    first.close()
    second.close()

    restarted = Collector(_FixedSource(), client, namespace, interval_s=0.05, history=settings)
    assert restarted.restore() > 0
    series = restarted.snapshot(0)["workers"]
    assert [w["key"] for w in series] == ["trainer/lr/w1"]
    examples = [values["examples"] for _t, values in series[0]["points"]]
    # all twelve ticks: the last fine points, and coarse ones where the fine ones no longer reach
    assert examples == [100.0 * n for n in range(1, 13)]
    times = [t for t, _v in series[0]["points"]]
    assert times == sorted(times) and times[-1] < time.time()
    restarted.close()


def test_the_page_shows_annotations_and_its_buttons_move_the_pointers(stack, namespace, tmp_path, system_packages):
    store = _versions(stack, namespace)
    store.annotate(2, "before the feature change", ["baseline"])
    with cli_server(cli_env(stack, namespace), tmp_path, "dashboard", "--interval-s", "0.3",
                    "--auth-token", TOKEN) as url, browser_page(1400) as (page, problems):
        page.goto(f"{url}/?token={TOKEN}")  # sets the cookie, then the page without the token
        notes = page.locator('[data-testid="lr:v2:notes"]')
        notes.wait_for(timeout=20_000)
        assert notes.inner_text() == "before the feature change #baseline"
        panel = page.locator('[data-testid="model-lr"]')
        assert panel.get_attribute("data-live") == "4" and panel.get_attribute("data-pinned") == "false"

        page.fill('[data-testid="operator"]', "ana")
        panel.locator('select[data-role="version"]').select_option("2")
        panel.locator('[data-role="reason"]').fill("calibration broke")
        page.click('[data-testid="lr:rollback"]')
        page.wait_for_selector('[data-testid="action-result"][data-ok="true"]', timeout=10_000)
        assert store.live() == 2 and store.pinned()
        page.wait_for_selector('#timeline tr[data-kind="rollback"]', timeout=10_000)
        row = page.locator('#timeline tr[data-kind="rollback"]').first.inner_text()
        assert "calibration broke" in row and "dashboard ana (127.0.0.1)" in row
        wait_for(lambda: panel.get_attribute("data-pinned") == "true", 10, "the panel to show the pin", 0.1)

        page.click('[data-testid="lr:unpin"]')  # the reason field still says why
        wait_for(lambda: store.live() == 4 and not store.pinned(), 10, "unpin from the page", 0.1)
        panel.locator('[data-role="reason"]').fill("")
        page.click('[data-testid="lr:pin"]')  # no reason: refused, and nothing moves
        page.wait_for_selector('[data-testid="action-result"][data-ok="false"]', timeout=10_000)
        assert "reason" in page.inner_text('[data-testid="action-result"]') and not store.pinned()

        # the time range sets every chart's x axis (none yet without workers) and is remembered
        page.click('#range button[data-range="300"]')
        assert page.evaluate("() => window.streamrec.state.range") == 300
        page.reload()
        page.locator('[data-testid="model-lr"]').wait_for(timeout=20_000)
        assert page.evaluate("() => window.streamrec.state.range") == 300
        assert page.locator('#range button.on').get_attribute("data-range") == "300"
        page.screenshot(path=str(tmp_path / "dashboard-actions.png"), full_page=True)
        assert problems == []
