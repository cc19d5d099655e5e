"""Files at rest: the SQLite store, its WAL and shared-memory files are readable by their owner only
(0600) in a folder made 0700, whatever the umask; so is the first admin token."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from clusterai.api.server import ensure_admin_token
from clusterai.core.model import JobSpec
from clusterai.store.sqlite import SQLiteStore


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_store_and_its_folder_are_private(tmp_path: Path, permissive_umask: None) -> None:
    folder = tmp_path / "work" / ".clusterai"
    store = SQLiteStore(folder / "clusterai.db")
    try:
        store.submit_many([JobSpec(task="unit.job", payload={"secret": "payload"})], 1.0)  # the WAL is written
        db = folder / "clusterai.db"
        assert {p.name for p in folder.iterdir()} >= {"clusterai.db", "clusterai.db-wal", "clusterai.db-shm"}
        assert mode(folder) == 0o700
        for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            assert mode(path) == 0o600, f"{path.name}: {oct(mode(path))}"
    finally:
        store.close()
    # a folder that already existed (one the operator chose) is left as it is; the files are private
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    other = SQLiteStore(shared / "jobs.db")
    try:
        assert mode(shared) == 0o755 and mode(shared / "jobs.db") == 0o600
    finally:
        other.close()


def test_an_existing_looser_store_is_tightened_with_a_warning(tmp_path: Path, permissive_umask: None,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "old.db"
    SQLiteStore(db).close()
    for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        if path.exists():
            os.chmod(path, 0o644)  # as an older clusterai left it
    caplog.set_level(logging.WARNING, logger="clusterai.files")
    store = SQLiteStore(db)
    try:
        assert mode(db) == 0o600
        assert all(mode(p) == 0o600 for p in (Path(f"{db}-wal"), Path(f"{db}-shm")) if p.exists())
        assert "was readable by other users" in caplog.text
    finally:
        store.close()


def test_the_admin_token_file_is_private_in_a_private_folder(tmp_path: Path, permissive_umask: None) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    try:
        written = ensure_admin_token(store, tmp_path / "new" / "admin.token")
    finally:
        store.close()
    assert written is not None
    assert mode(written) == 0o600 and mode(written.parent) == 0o700
