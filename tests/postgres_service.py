"""A private PostgreSQL server for tests: its own data directory and a free port, torn down
after, so a PostgreSQL the machine already runs is neither used nor disturbed."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.ports import free_port

USER = "llmc"  # the superuser initdb creates; trust auth, so no password
START_TIMEOUT_S = 60


def _bindir() -> Path | None:
    """The folder of initdb and pg_ctl: on PATH, else Debian's versioned folder."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    return Path(candidates[0]).parent if candidates else None


def _run(command: list[str], what: str, log: Path | None = None) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=START_TIMEOUT_S)
    if done.returncode != 0:
        tail = log.read_text()[-2000:] if log is not None and log.exists() else ""
        raise RuntimeError(f"{what} failed ({done.returncode}): {done.stderr[-2000:]}{tail}")


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Starts PostgreSQL in a temporary folder; yields ``postgresql+psycopg://`` URL of its
    ``postgres`` database; stops it (immediately: its data is thrown away) and removes the
    folder after. Skips the test when PostgreSQL is not installed.

    initdb refuses to run as root, so as root the server runs as the ``postgres`` user
    the PostgreSQL packages create.
    """
    bindir = _bindir()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (no initdb on PATH or in /usr/lib/postgresql)")
    folder = Path(tempfile.mkdtemp(prefix="llmc-pg-"))  # short: it holds the unix socket
    as_user = []
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, log, port = folder / "data", folder / "log", free_port()
    # fsync off: the data is thrown away after the tests, and it halves their time.
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    pg_ctl = [*as_user, str(bindir / "pg_ctl"), "-D", str(data)]
    try:
        initdb = [str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", USER]
        _run([*as_user, *initdb, "-E", "UTF8", "--locale=C", "--no-sync"], "initdb")
        _run([*pg_ctl, "-o", options, "-l", str(log), "-w", "start"], "pg_ctl start", log)
        yield f"postgresql+psycopg://{USER}@127.0.0.1:{port}/postgres"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


def fresh_database(server_url: str) -> str:
    """A new empty database on the server of ``server_url``; its URL."""
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(server_url)
    name = "t_" + uuid.uuid4().hex[:12]
    conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return url.set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """One private server per test module (see postgres_server)."""
    with postgres_server() as url:
        yield url
