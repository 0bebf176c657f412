"""A restart does not forget who the harvesters are: the SQLite store, and the memory store's snapshot."""

from __future__ import annotations

import smtplib
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.helpers import RunningServer, start_server

HARVEST = {"threshold": 3, "delay": 0}


def _flag(server: RunningServer, source: str) -> None:
    with smtplib.SMTP(server.host, server.port, timeout=30, source_address=(source, 0)) as smtp:
        smtp.ehlo("client.test")
        smtp.mail("s@remote.test")
        codes = [smtp.rcpt(f"guess{i}@example.test")[0] for i in range(3)]
    assert codes == [550, 550, 450]  # the third unknown reaches the threshold: flagged


def _first_rcpt(server: RunningServer, source: str) -> int:
    with smtplib.SMTP(server.host, server.port, timeout=30, source_address=(source, 0)) as smtp:
        smtp.ehlo("client.test")
        smtp.mail("s@remote.test")
        return smtp.rcpt("alice@example.test")[0]


@pytest.mark.parametrize(
    "reputation",
    [{"store": "sqlite://state.db"}, {"snapshot": "snapshot.db"}],
    ids=["sqlite-store", "memory-snapshot"],
)
def test_a_flagged_client_is_still_flagged_after_a_restart(
    tmp_path: Path, reputation: dict[str, Any]
) -> None:
    overrides = {"harvest": HARVEST, "reputation": reputation}
    server = start_server(tmp_path, overrides)
    try:
        _flag(server, "127.0.1.2")
    finally:
        assert server.stop() == 0
    database = tmp_path / str(next(iter(reputation.values()))).removeprefix("sqlite://")
    with sqlite3.connect(database) as db:  # the record is on disk, under the client's keys only
        keys = {row[0] for row in db.execute("SELECT key FROM client_state")}
    assert keys == {"ip:127.0.1.2", "net:127.0.1.0/24"}

    server = start_server(tmp_path, overrides)
    try:
        assert _first_rcpt(server, "127.0.1.2") == 450  # flagged before its first RCPT here
        assert _first_rcpt(server, "127.0.2.3") == 250  # someone else is not
    finally:
        assert server.stop() == 0


def test_a_sqlite_store_in_a_missing_folder_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(AssertionError):
        start_server(tmp_path, {"reputation": {"store": "sqlite://missing/state.db"}})
    assert "[reputation] store: " in (tmp_path / "server.log").read_text()
    assert "missing is not a directory" in (tmp_path / "server.log").read_text()


def test_the_snapshot_is_read_before_the_first_client_is_served(tmp_path: Path) -> None:
    overrides = {"harvest": HARVEST, "reputation": {"snapshot": "snapshot.db"}}
    server = start_server(tmp_path, overrides)
    try:
        _flag(server, "127.0.1.2")
    finally:
        assert server.stop() == 0
    # Many more records make the snapshot slow to read: a client served before it is read would pass.
    with sqlite3.connect(tmp_path / "snapshot.db") as db:
        [(flagged, expires)] = db.execute(
            "SELECT state, expires FROM client_state WHERE key = 'ip:127.0.1.2'"
        )
        db.executemany(
            "INSERT INTO client_state (key, state, expires) VALUES (?, ?, ?)",
            ((f"ip:10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", flagged, expires) for i in range(60_000)),
        )
    server = start_server(tmp_path, overrides)
    try:
        assert _first_rcpt(server, "127.0.1.2") == 450
        server.wait_for_log(r"restored 60002 client records")
    finally:
        assert server.stop() == 0
