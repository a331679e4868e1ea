"""The scaling dashboard on a real cluster, driven in headless Chromium (Playwright).

Opens the page `up` printed, sees data within 2 s and updates, charts a load, pins two
replicas from the page and sees them running, returns to auto, and stops a training job
from the page. Screenshots of each state go to test-artifacts/dashboard/; the browser's
console must stay free of errors.

The cluster runs without API keys, so its page hides the keys section; that section is driven
against the same app served here, on a real store, beside fake numbers (no second cluster).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cluster.dashboard.actor import bind
from cluster.dashboard.keys import KeyActions
from cluster.dashboard.server import create_app
from deployments.store import Limits, Store, UsageDelta, hash_secret
from tests.conftest import REPO
from tests.e2e.scaling import Cluster, running_cluster, scaling_model, steady_load
from tests.unit.test_dashboard_api import FakeActions, FakeCollector
from tests.waiting import wait_until

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts" / "dashboard"
REPLICA_START_S = 180  # a second replica takes 40-60 s here; more on a loaded machine

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium")
playwright_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")

SCALING = {"replica_concurrency": 4, "upscale_delay_s": 1, "downscale_delay_s": 10}

# A stand-in training job: progress lines as a real run prints them, one a second.
FAKE_TRAINING = (
    "import json, time\n"
    "for i in range(1, 601):\n"
    "    line = {'step': i, 'loss': 3.0 / i, 'tokens_per_s': 1234.0}\n"
    "    print('[llm-cluster:progress] ' + json.dumps(line), flush=True)\n"
    "    time.sleep(1)\n"
)


@pytest.fixture(scope="module")
def cluster(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    model = scaling_model(tiny_model_dir, SCALING)
    with running_cluster(tmp_path_factory.mktemp("dashboard"), {}, [model]) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def state(cluster: Cluster) -> dict:
    return json.loads((Path(cluster.env["LLM_CLUSTER_STATE_DIR"]) / "state.json").read_text())


def in_token_mode(code: str) -> str:
    """Runs ``code`` in a Python that speaks the cluster's token auth (not this process:
    other tests' local clusters run without it); returns its stdout."""
    prelude = "from common.internals import enable_token_auth\nenable_token_auth()\n"
    result = subprocess.run([sys.executable, "-c", prelude + code], capture_output=True,
                            text=True, timeout=120, cwd=REPO)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.fixture(scope="module")
def token() -> str:
    return in_token_mode("from common.internals import cluster_auth_token\n"
                         "print(cluster_auth_token())")  # fmt: skip


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, state: dict) -> Iterator:
    """The dashboard in a fresh tab; fails the test on any console error or page error."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.console_errors = errors  # a test that provokes an HTTP error removes its own
    page.opened_at = time.monotonic()
    page.goto(state["console_url"])
    yield page
    page.close()
    assert errors == [], errors


def shot(page, name: str) -> None:
    """A screenshot of the whole page (or of one locator's element)."""
    full = {"full_page": True} if hasattr(page, "goto") else {}
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), **full)


def text(page, selector: str) -> str:
    return page.locator(selector).first.inner_text()


def points(page, chart: str, key: str) -> int:
    path = page.locator(f'[data-chart="{chart}"] path[data-key="{key}"]').first
    return int(path.get_attribute("data-points") or 0)


def test_up_prints_the_dashboard(state: dict) -> None:
    assert state["console_url"].startswith("http://127.0.0.1:")


def test_first_data_within_two_seconds_and_updates(page) -> None:
    page.wait_for_function(
        "document.querySelector('[data-testid=replicas-current]')?.textContent === '1' && "
        "Number(document.querySelector('[data-chart=replicas] path')?.dataset.points) > 0",
        timeout=2000,
    )
    first_data_s = time.monotonic() - page.opened_at
    shot(page, "01-first-data")
    stamp = text(page, "[data-testid=updated]")
    page.wait_for_function(
        f"document.querySelector('[data-testid=updated]').textContent !== {json.dumps(stamp)}",
        timeout=2500,
    )
    print(f"first data after {first_data_s:.2f} s")


def test_load_is_charted(cluster: Cluster, page) -> None:
    with steady_load(cluster.api, "tiny", concurrency=4) as answers:
        charted = (("qps", "qps"), ("ttft", "ttft_p50_ms"), ("tokens", "completion_tps"))
        wait_until(lambda: all(points(page, *c) for c in charted), 30, "load on the charts")
        page.wait_for_function(
            "parseFloat(document.querySelector('[data-last=qps]').textContent) > 0", timeout=15000
        )
        shot(page, "02-under-load")
    assert set(answers) == {200}, answers


def test_pin_two_replicas_from_the_page_then_auto(cluster: Cluster, page, token: str) -> None:
    page.fill("#token", token)
    page.dispatch_event("#token", "change")
    form = page.locator('section[data-model="tiny"] form.controls')
    form.locator('input[value="pin"]').check()
    form.locator('input[name="pin"]').fill("2")
    form.locator("button").click()
    result = form.locator("[data-testid=scale-result]")
    page.wait_for_function("document.querySelector('[data-testid=scale-result]')"
                           ".textContent.includes('pinned at 2')", timeout=15000)  # fmt: skip
    assert "ok" in (result.get_attribute("class") or "")
    shot(page, "03-pinned")
    page.wait_for_function("document.querySelector('[data-testid=replicas-current]')"
                           ".textContent === '2'", timeout=REPLICA_START_S * 1000)  # fmt: skip
    assert cluster.model("tiny")["running"] == 2
    shot(page, "04-two-replicas")
    form.locator('input[value="auto"]').check()
    form.locator("button").click()
    page.wait_for_function("document.querySelector('[data-testid=replicas-mode]')"
                           ".textContent === 'auto'", timeout=15000)  # fmt: skip
    assert cluster.model("tiny")["pinned"] is None
    shot(page, "05-auto")


def test_a_bad_scale_request_shows_the_error(page, token: str) -> None:
    page.fill("#token", token)
    page.dispatch_event("#token", "change")
    form = page.locator('section[data-model="tiny"] form.controls')
    # The model's section appears with the first overview: absent until then, not an error.
    page.wait_for_function("(document.querySelector('[data-testid=replicas-min]')"
                           "?.textContent ?? '–') !== '–'", timeout=5000)  # fmt: skip
    form.locator('input[name="min"]').fill("3")
    form.locator('input[name="max"]').fill("2")
    form.locator("button").click()
    page.wait_for_function("document.querySelector('[data-testid=scale-result]')"
                           ".textContent.includes('exceeds')", timeout=15000)  # fmt: skip
    # Chromium logs every 4xx response to the console; this one is the point of the test.
    expected = [e for e in page.console_errors if "status of 400" in e]
    assert len(expected) == 1, page.console_errors
    page.console_errors.remove(expected[0])
    shot(page, "06-scale-error")


def test_stop_a_training_job_from_the_page(page, state: dict, token: str, tmp_path: Path) -> None:
    script = tmp_path / "fake_training.py"
    script.write_text(FAKE_TRAINING)
    metadata = {"kind": "llm-cluster-train", "run_name": "dash-e2e", "train_kind": "pretrain",
                "max_steps": "600"}  # fmt: skip
    job_id = in_token_mode(
        "from ray.job_submission import JobSubmissionClient\n"
        f"client = JobSubmissionClient({state['dashboard_url']!r})\n"
        f"print(client.submit_job(entrypoint={f'python {script}'!r}, metadata={metadata!r}))"
    )
    page.fill("#token", token)
    page.dispatch_event("#token", "change")
    row = page.locator(f'tr[data-job="{job_id}"]')
    row.locator("button[data-stop]").wait_for(timeout=60000)
    page.wait_for_function(f"document.querySelector('tr[data-job=\"{job_id}\"] td:nth-child(3)')"
                           ".textContent.trim().match(/^[1-9]/)", timeout=60000)  # fmt: skip
    shot(page, "07-job-running")
    row.locator("button[data-stop]").click()
    page.wait_for_function(f"document.querySelector('tr[data-job=\"{job_id}\"] .job-state')"
                           ".textContent === 'STOPPED'", timeout=60000)  # fmt: skip
    shot(page, "08-job-stopped")


def test_keys_section_is_hidden_without_auth(page) -> None:
    page.wait_for_function("document.querySelector('[data-testid=updated]').textContent",
                           timeout=5000)  # fmt: skip
    assert page.locator("#api-keys").is_hidden()


KEYS_TOKEN = "keys-e2e-token"


@pytest.fixture
def keys_app(tmp_path: Path) -> Iterator[tuple[str, Store]]:
    """The dashboard app with the API keys of a real store (a key with a day's usage), fake
    numbers otherwise, served by uvicorn in a thread; its URL and the store."""
    import uvicorn

    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    store.set_tenant("acme", Limits(rpm=600, daily_tokens=1_000_000))
    key, _ = store.create_key("team-a", tenant="acme", models=["tiny"], limits=Limits(rpm=60))
    store.record_usage([UsageDelta(key.id, "acme", "tiny", datetime.now(UTC), requests=1234,
                                   prompt_tokens=45678, completion_tokens=98765, cache_hits=56,
                                   rate_limited=7, errors=2)])  # fmt: skip
    collector = FakeCollector()
    app = create_app(collector, FakeActions(collector), lambda: KEYS_TOKEN, True,
                     {"ray_dashboard": None, "api": None, "prometheus": None},
                     KeyActions(store))  # fmt: skip
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 15, "the dashboard app", interval_s=0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", store
    server.should_exit = True
    thread.join(10)
    store.close()


def test_create_and_revoke_a_key_from_the_page(browser, keys_app: tuple[str, Store]) -> None:
    url, store = keys_app
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url)
    page.fill("#token", KEYS_TOKEN)
    page.dispatch_event("#token", "change")
    page.locator('#keys tr[data-key] td[data-usage="requests"]').wait_for(timeout=5000)
    assert text(page, '#keys td[data-usage="requests"]') == "1,234"
    assert "1 of 1" in text(page, '#tenants tr[data-tenant="acme"]')

    form = page.locator("#key-form")
    form.locator('input[name="name"]').fill("from-page")
    form.locator('input[name="tenant"]').fill("acme")
    form.locator('input[name="models"]').fill("tiny, other")
    form.locator('input[name="rpm"]').fill("30")
    form.locator('input[name="expires_at"]').fill("2099-01-31T12:00")
    form.locator("button[type=submit]").click()
    page.locator("[data-testid=new-secret]").wait_for(state="visible", timeout=5000)
    secret = text(page, "[data-testid=new-secret]")
    created = store.get_key("from-page")
    assert created.secret_hash == hash_secret(secret) and created.models == ["tiny", "other"]
    assert created.limits.rpm == 30 and created.expires_at.year == 2099
    row = page.locator(f'#keys tr[data-key="{created.id}"]')
    row.wait_for(timeout=5000)
    shot(page.locator("#api-keys"), "09-api-keys")

    page.once("dialog", lambda dialog: dialog.accept())
    row.locator("button[data-revoke]").click()
    page.wait_for_function(f"document.querySelector('#keys tr[data-key=\"{created.id}\"] "
                           ".state').textContent === 'revoked'", timeout=5000)  # fmt: skip
    assert store.get_key(created.id).revoked_at is not None

    form.locator('input[name="name"]').fill("team-a")
    form.locator("button[type=submit]").click()
    page.wait_for_function("document.querySelector('[data-testid=key-result]')"
                           ".textContent.includes('already exists')", timeout=5000)  # fmt: skip
    shot(page.locator("#api-keys"), "10-api-keys-revoked-and-duplicate")
    page.close()
    # Chromium logs every 4xx response; the duplicate name's 409 is the point.
    assert [e for e in errors if "status of 409" not in e] == [] and len(errors) == 1, errors
