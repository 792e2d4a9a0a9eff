"""The PostgreSQL server the Postgres tests use: one that answers, or a throwaway cluster of the test session.

1. If a server answers where libpq's standard variables point (``PGHOST``, ``PGPORT``,
   ``PGUSER``, ``PGPASSWORD``; default ``127.0.0.1:5432`` as ``postgres``), accepts the
   credentials and the user is a superuser (the connection-kill test needs
   ``pg_terminate_backend``), the tests use it, each session in a database of its own.
2. Otherwise a cluster is made from the system's PostgreSQL binaries with pytest-postgresql's
   executor (``initdb``, ``pg_ctl start`` on a free port, ``pg_ctl stop`` and removal at the
   end). ``initdb`` refuses to run as root, so as root ``pg_ctl`` runs as the ``postgres`` OS
   user (``runuser``). Under ``pytest -n 2`` each worker starts its own, on a port of its own.
3. With neither, a Postgres test fails with one line naming what to install.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2

NO_POSTGRES = (
    "PostgreSQL: no server answers at {where} as a superuser and no pg_ctl was found; install the server "
    "(apt-get install postgresql), point PGHOST/PGPORT/PGUSER/PGPASSWORD at one, or leave these tests out "
    "with -m 'not postgres'"
)


@dataclass(frozen=True)
class PgServer:
    host: str
    port: int
    user: str
    password: str
    #: "answering" (a server that was already there) or "throwaway" (started for this session).
    origin: str
    #: A throwaway cluster's folder (data, socket, log), removed when it stops.
    folder: str = ""

    def connect(self, dbname: str = "postgres", **options: Any) -> Any:
        return psycopg2.connect(
            host=self.host, port=self.port, user=self.user, password=self.password, dbname=dbname, **options
        )


def from_environment() -> PgServer:
    """Where libpq's standard variables point (the defaults where they are unset)."""
    return PgServer(
        host=os.environ.get("PGHOST") or "127.0.0.1",
        port=int(os.environ.get("PGPORT") or 5432),
        user=os.environ.get("PGUSER") or "postgres",
        password=os.environ.get("PGPASSWORD") or "",
        origin="answering",
    )


#: How long a new cluster may take to accept connections once ``pg_ctl start -w`` has returned.
ACCEPT_WITHIN_S = 60.0


def _wait_until_accepting(server: PgServer) -> None:
    """Connect until the server accepts: on a slow machine ``pg_ctl -w`` can return while it still answers
    "the database system is starting up"."""
    deadline = time.monotonic() + ACCEPT_WITHIN_S
    while True:
        try:
            server.connect(connect_timeout=3).close()
            return
        except psycopg2.OperationalError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.1)


def answering_server() -> PgServer | None:
    """The server the environment points at, if it accepts the credentials of a superuser."""
    server = from_environment()
    try:
        connection = server.connect(connect_timeout=3)
    except psycopg2.OperationalError:
        return None
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            row = cursor.fetchone()
    finally:
        connection.close()
    return server if row and row[0] else None


def find_pg_ctl() -> str | None:
    """The system's ``pg_ctl``: on the PATH, where ``pg_config`` says, or Debian's versioned folders."""
    found = shutil.which("pg_ctl")
    if found:
        return found
    if shutil.which("pg_config"):
        bindir = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True).stdout.strip()
        if bindir and (Path(bindir) / "pg_ctl").is_file():
            return str(Path(bindir) / "pg_ctl")
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    return candidates[-1] if candidates else None


@contextmanager
def throwaway_cluster(pg_ctl: str) -> Iterator[PgServer]:
    """A new cluster on a free port of 127.0.0.1 (trust auth, superuser ``postgres``), removed afterwards."""
    from port_for import get_port
    from pytest_postgresql.executors import PostgreSQLExecutor

    base = Path(tempfile.mkdtemp(prefix="fractal-pg-"))
    executable = pg_ctl
    if os.geteuid() == 0:  # initdb refuses root: the cluster is the postgres OS user's
        owner = pwd.getpwnam("postgres")
        os.chown(base, owner.pw_uid, owner.pw_gid)
        executable = str(base / "pg_ctl")
        Path(executable).write_text(f'#!/bin/sh\nexec runuser -u postgres -- "{pg_ctl}" "$@"\n')
        Path(executable).chmod(0o755)
    port = get_port(None)
    assert port is not None
    executor = PostgreSQLExecutor(
        executable=executable,
        host="127.0.0.1",
        port=port,
        datadir=str(base / "data"),
        unixsocketdir=str(base),
        logfile=str(base / "postgresql.log"),
        startparams="-w",
        dbname="postgres",
        user="postgres",
        password="",
    )
    executor.start()
    server = PgServer("127.0.0.1", port, "postgres", "", origin="throwaway", folder=str(base))
    try:
        _wait_until_accepting(server)
        yield server
    finally:
        executor.stop()
        shutil.rmtree(base, ignore_errors=True)
