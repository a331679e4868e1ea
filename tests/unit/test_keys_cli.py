"""`llm-cluster keys ...` and `tenants ...` in-process against a SQLite store named by
`--config`: secrets shown once and never listed, limits and expiry, clear refusals (exit 2
for bad input, 1 for an unknown key), rotation, usage windows; and `up` refusing an open
API beyond loopback before it starts anything."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from cluster.cli import main
from cluster.state import ClusterState, load_state, save_state
from common.settings import get_settings
from deployments.store import Store, UsageDelta, hash_secret
from tests.conftest import free_port

SECRET = re.compile(r"llmc-[A-Za-z0-9_-]{43}")


@pytest.fixture(autouse=True)
def isolated_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("LLM_CLUSTER_STATE_DIR", str(tmp_path / "home"))
    monkeypatch.setenv("LLM_CLUSTER_CONFIG", str(tmp_path / "no-such.yaml"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def write_config(tmp_path: Path, name: str = "cluster.yaml", **sections: object) -> Path:
    data = {"http": {"port": free_port()}, "models": [{"id": "m", "source": "m"}], **sections}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "keys.db"


@pytest.fixture
def cfg(tmp_path: Path, db: Path) -> str:
    """A config whose store is a SQLite file of this test."""
    return str(write_config(tmp_path, gateway={"store": {"url": f"sqlite:///{db}"}}))


@pytest.fixture
def store(db: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{db}")
    yield store
    store.close()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def create(capsys: pytest.CaptureFixture[str], cfg: str, name: str, *options: str) -> dict:
    code, out, err = run(capsys, "keys", "create", "--name", name, "--json", "--config", cfg,
                         *options)  # fmt: skip
    assert code == 0, err
    return json.loads(out)


def test_create_prints_the_secret_once_and_listings_never_show_it(
    capsys: pytest.CaptureFixture[str], cfg: str, db: Path, store: Store
) -> None:
    code, out, err = run(capsys, "keys", "create", "--name", "ci", "--config", cfg)
    assert code == 0, err
    secrets = SECRET.findall(out)
    assert len(secrets) == 1 and "Shown once" in out, out
    secret = secrets[0]
    (key,) = store.list_keys()
    assert key.name == "ci" and key.tenant == "default"
    assert key.secret_hash == hash_secret(secret) and secret.startswith(key.prefix)
    assert key.id in out

    shown = [run(capsys, "keys", "list", "--config", cfg),
             run(capsys, "keys", "list", "--json", "--config", cfg),
             run(capsys, "keys", "show", "ci", "--config", cfg),
             run(capsys, "keys", "show", key.id, "--config", cfg)]  # fmt: skip
    for code, out, err in shown:
        assert code == 0, err
        assert key.id in out and key.prefix in out
        assert secret not in out and key.secret_hash not in out
    listing = json.loads(shown[1][1])
    assert [v["name"] for v in listing] == ["ci"] and listing[0]["state"] == "active"
    assert not {"key", "secret", "secret_hash", "hash"} & set(listing[0])
    stored = b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))
    assert secret.encode() not in stored and key.secret_hash.encode() in stored


def test_models_limits_and_expiry(capsys: pytest.CaptureFixture[str], cfg: str) -> None:
    limited = create(capsys, cfg, "limited", "--tenant", "acme", "--models", "a, b,",
                     "--rpm", "3", "--tpm", "100", "--max-concurrent", "2",
                     "--daily-tokens", "0", "--expires", "30d")  # fmt: skip
    assert limited["tenant"] == "acme" and limited["models"] == ["a", "b"]
    assert limited["limits"] == {"rpm": 3, "tpm": 100, "max_concurrent": 2, "daily_tokens": 0}
    expires = datetime.fromisoformat(limited["expires_at"])
    assert abs(expires - (datetime.now(UTC) + timedelta(days=30))) < timedelta(minutes=1)

    dated = create(capsys, cfg, "dated", "--expires", "2031-01-31")
    assert dated["expires_at"] == "2031-01-31T00:00:00+00:00"
    zoned = create(capsys, cfg, "zoned", "--expires", "2031-01-31T12:00:00+02:00")
    assert zoned["expires_at"] == "2031-01-31T10:00:00+00:00"
    plain = create(capsys, cfg, "plain")
    assert plain["models"] == ["*"] and plain["expires_at"] is None
    assert set(plain["limits"].values()) == {None}

    code, out, _ = run(capsys, "keys", "show", "limited", "--config", cfg)
    assert code == 0 and json.loads(out)["limits"]["rpm"] == 3
    code, out, _ = run(capsys, "keys", "list", "--config", cfg)
    assert "rpm 3, tpm 100, max_concurrent 2, daily_tokens 0" in out and "a,b" in out
    assert "no limits" in out


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--expires", "tomorrow"], "cannot read the time 'tomorrow'"),
        (["--expires", "2031-02-30"], "cannot read the time '2031-02-30'"),
        (["--expires=-3d"], "cannot read the time '-3d'"),
        (["--expires", "2001-01-01"], "--expires '2001-01-01' is in the past"),
        (["--expires", "0s"], "--expires '0s' is in the past"),
        (["--rpm", "-1"], "must be 0 or more: -1"),
        (["--tpm", "ten"], "not an integer: 'ten'"),
        (["--max-concurrent", "1.5"], "not an integer: '1.5'"),
    ],
)
def test_bad_expiry_or_limit_is_a_usage_error_and_creates_nothing(
    capsys: pytest.CaptureFixture[str], cfg: str, store: Store, options: list[str], message: str
) -> None:
    code, out, err = run(capsys, "keys", "create", "--name", "k", "--config", cfg, *options)
    assert code == 2 and message in err, err
    assert "llmc-" not in out
    assert store.list_keys() == []


def test_bad_limit_of_a_tenant_and_bad_since(capsys: pytest.CaptureFixture[str], cfg: str) -> None:
    code, _, err = run(capsys, "tenants", "set", "acme", "--daily-tokens", "-5", "--config", cfg)
    assert code == 2 and "must be 0 or more: -5" in err
    code, _, err = run(capsys, "keys", "usage", "--since", "last week", "--config", cfg)
    assert code == 2 and "cannot read the time 'last week'" in err


@pytest.mark.parametrize("command", ["show", "revoke", "rotate"])
def test_unknown_key_is_exit_1_with_a_clear_message(
    capsys: pytest.CaptureFixture[str], cfg: str, command: str
) -> None:
    create(capsys, cfg, "real")
    code, out, err = run(capsys, "keys", command, "nope", "--config", cfg)
    assert (code, out) == (1, "")
    assert err == "error: no key has the id or name 'nope'\n"


def test_duplicate_name_is_refused(
    capsys: pytest.CaptureFixture[str], cfg: str, store: Store
) -> None:
    first = create(capsys, cfg, "twin")
    code, out, err = run(capsys, "keys", "create", "--name", "twin", "--config", cfg)
    assert code == 1 and "llmc-" not in out
    assert "a key named 'twin' already exists" in err
    assert [k.id for k in store.list_keys()] == [first["id"]]
    code, _, err = run(capsys, "keys", "create", "--name", " ", "--config", cfg)
    assert code == 1 and "key name must be 1 to" in err


def test_rotate_gives_a_new_secret_and_drops_the_old_hash(
    capsys: pytest.CaptureFixture[str], cfg: str, store: Store
) -> None:
    old = create(capsys, cfg, "svc", "--rpm", "7")
    code, out, err = run(capsys, "keys", "rotate", "svc", "--config", cfg)
    assert code == 0, err
    (new,) = SECRET.findall(out)
    assert new != old["key"] and old["key"] not in out
    key = store.get_key("svc")
    assert key.id == old["id"] and key.limits.rpm == 7
    assert key.secret_hash == hash_secret(new) and new.startswith(key.prefix)
    hashes = set(store.snapshot().keys)
    assert hash_secret(old["key"]) not in hashes and hash_secret(new) in hashes

    code, out, _ = run(capsys, "keys", "rotate", old["id"], "--json", "--config", cfg)
    again = json.loads(out)
    assert code == 0 and again["id"] == old["id"] and again["key"] not in (new, old["key"])


def test_revoke_then_rotate_is_refused(
    capsys: pytest.CaptureFixture[str], cfg: str, store: Store
) -> None:
    key = create(capsys, cfg, "gone")
    code, out, _ = run(capsys, "keys", "revoke", "gone", "--config", cfg)
    assert code == 0 and key["id"] in out
    code, out, _ = run(capsys, "keys", "show", "gone", "--config", cfg)
    assert json.loads(out)["state"] == "revoked" and json.loads(out)["revoked_at"]
    code, out, err = run(capsys, "keys", "rotate", "gone", "--config", cfg)
    assert code == 1 and "llmc-" not in out and "is revoked" in err
    assert store.get_key("gone").secret_hash == hash_secret(key["key"])


def _usage(capsys: pytest.CaptureFixture[str], cfg: str, *options: str) -> list[dict]:
    code, out, err = run(capsys, "keys", "usage", "--json", "--config", cfg, *options)
    assert code == 0, err
    return json.loads(out)["usage"]


def test_usage_since(capsys: pytest.CaptureFixture[str], cfg: str, store: Store) -> None:
    a = create(capsys, cfg, "a", "--tenant", "acme")
    b = create(capsys, cfg, "b")
    now = datetime.now(UTC)
    store.record_usage([
        UsageDelta(a["id"], "acme", "m", now, requests=2, prompt_tokens=10,
                   completion_tokens=4, cache_hits=1),
        UsageDelta(a["id"], "acme", "m", now - timedelta(days=3), requests=5,
                   prompt_tokens=50, completion_tokens=20, rate_limited=2),
        UsageDelta(b["id"], "default", "m", now - timedelta(hours=2), requests=1, errors=1),
    ])  # fmt: skip

    recent = _usage(capsys, cfg)  # the default window: 24 h
    assert {(r["key_id"], r["requests"]) for r in recent} == {(a["id"], 2), (b["id"], 1)}
    (last_hour,) = _usage(capsys, cfg, "--since", "30m")
    assert (last_hour["key_id"], last_hour["prompt_tokens"], last_hour["cache_hits"]) == (
        a["id"], 10, 1,
    )  # fmt: skip
    week = {r["key_id"]: r for r in _usage(capsys, cfg, "--since", "7d")}
    assert week[a["id"]]["requests"] == 7 and week[a["id"]]["completion_tokens"] == 24
    assert week[a["id"]]["rate_limited"] == 2 and week[b["id"]]["errors"] == 1
    dated = _usage(capsys, cfg, "--since", (now - timedelta(days=4)).date().isoformat())
    assert sum(r["requests"] for r in dated) == 8
    assert [r["key_id"] for r in _usage(capsys, cfg, "b", "--since", "7d")] == [b["id"]]
    assert [r["tenant"] for r in _usage(capsys, cfg, "--tenant", "acme", "--since", "7d")] == [
        "acme"
    ]
    code, out, _ = run(capsys, "keys", "usage", "--since", "7d", "--config", cfg)
    assert code == 0 and a["id"] in out and "REQUESTS" in out
    code, _, err = run(capsys, "keys", "usage", "nope", "--config", cfg)
    assert code == 1 and "no key has the id or name 'nope'" in err


def test_tenants_set_and_list(capsys: pytest.CaptureFixture[str], cfg: str, store: Store) -> None:
    code, out, _ = run(capsys, "tenants", "set", "acme", "--rpm", "10", "--tpm", "500",
                       "--config", cfg)  # fmt: skip
    assert code == 0 and out == "Tenant acme: rpm 10, tpm 500.\n"
    create(capsys, cfg, "k", "--tenant", "implicit")
    code, out, _ = run(capsys, "tenants", "list", "--json", "--config", cfg)
    tenants = {t["name"]: t["limits"] for t in json.loads(out)}
    assert tenants["acme"] == {"rpm": 10, "tpm": 500, "max_concurrent": None,
                               "daily_tokens": None}  # fmt: skip
    assert set(tenants["implicit"].values()) == {None}
    code, out, _ = run(capsys, "tenants", "set", "acme", "--max-concurrent", "4", "--config", cfg)
    assert code == 0 and out == "Tenant acme: max_concurrent 4.\n"  # the others lifted
    (acme,) = [t for t in store.list_tenants() if t.name == "acme"]
    assert (acme.limits.rpm, acme.limits.tpm, acme.limits.max_concurrent) == (None, None, 4)
    code, out, _ = run(capsys, "tenants", "list", "--config", cfg)
    assert "acme" in out and "max_concurrent 4" in out and "no limits" in out


def test_without_config_the_running_clusters_store_is_used(
    capsys: pytest.CaptureFixture[str], cfg: str, store: Store
) -> None:
    save_state(ClusterState(address="127.0.0.1:1", api_url="http://127.0.0.1:1/v1",
                            dashboard_url="", config=cfg))  # fmt: skip
    code, out, err = run(capsys, "keys", "create", "--name", "from-state")
    assert code == 0, err
    assert [k.name for k in store.list_keys()] == ["from-state"]


def test_a_missing_config_is_an_error_not_another_store(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A mistyped --config must not send the key to the default store unnoticed."""
    missing = str(tmp_path / "typo.yaml")
    for argv in (["keys", "create", "--name", "k"], ["keys", "list"], ["tenants", "list"]):
        code, out, err = run(capsys, *argv, "--config", missing)
        assert code == 2 and "typo.yaml" in err and "not found" in err, err
        assert "llmc-" not in out
    assert not (tmp_path / "home" / "llm-cluster.db").exists()


def test_without_any_config_the_default_store_is_in_the_state_dir(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run(capsys, "keys", "create", "--name", "local")
    assert code == 0, err
    assert (tmp_path / "home" / "llm-cluster.db").is_file()
    code, out, _ = run(capsys, "keys", "list", "--json")
    assert [v["name"] for v in json.loads(out)] == ["local"]


def test_up_refuses_an_open_api_beyond_loopback_before_starting_anything(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cluster import commands, gateway_setup

    def started(*_: object, **__: object) -> None:
        raise AssertionError("`up` started something")

    monkeypatch.setattr(commands.ray_head, "launch_head", started)
    monkeypatch.setattr(gateway_setup.redis_server, "start", started)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    path = write_config(tmp_path, http={"host": "0.0.0.0", "port": free_port()})
    code, out, err = run(capsys, "up", "--config", str(path))
    assert code == 2 and "gateway.auth" in err and "0.0.0.0" in err, err
    assert "Deploying" not in out
    assert load_state() is None
    assert not (tmp_path / "home" / "llm-cluster.db").exists()
