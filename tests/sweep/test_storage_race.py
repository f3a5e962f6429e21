"""Several processes opening one new SQLite study database at once all succeed.

The sweeper, its first asynchronous workers and an early ``optuna-dashboard`` race to
create Optuna's schema; without a retry the loser fails with alembic's
``UNIQUE constraint failed: alembic_version.version_num`` (seen in the async SIGKILL test,
whose poller opened the database while the sweeper created it).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

CODE = """
import sys, time
from eecontrol.sweep.common import open_storage, rdb_storage
start, url, plain = float(sys.argv[1]), sys.argv[2], sys.argv[3] == "plain"
while time.time() < start:
    pass
if plain:
    from optuna.storages import RDBStorage
    RDBStorage(url)
else:
    open_storage(url)
"""


def _race(tmp_path, plain: bool, n: int = 6) -> list[subprocess.CompletedProcess]:
    import time

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    start = time.time() + 8.0  # every process imported and spinning before the start
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CODE, str(start), url, "plain" if plain else "retry"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]
    return [(p.wait(timeout=120), p.stderr.read()) for p in procs]


@pytest.mark.timeout(300)
def test_processes_opening_a_new_study_database_at_once_all_succeed(tmp_path):
    results = _race(tmp_path, plain=False)
    failed = [err[-500:] for rc, err in results if rc != 0]
    assert not failed, failed
    assert (tmp_path / "optuna.db").stat().st_size > 0
