"""Fixtures for the hostile tests: real servers shared by config across the package, and fresh ones.

``servers.get(config)`` starts one smtp-tarpit per distinct config (tests.e2e.helpers.start_server) the
first time it is asked for and keeps it for the whole run: a hostile dialogue costs a connection, not a
process. Tests that need a server of their own (timing, floods, memory) use ``make_server`` from the e2e
fixtures, stopped after each test.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import make_server  # noqa: F401  (the e2e fixture, reused here)
from tests.e2e.helpers import RunningServer, start_server


class ServerPool:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.running: dict[str, RunningServer] = {}

    def get(self, config: dict[str, dict[str, Any]] | None = None) -> RunningServer:
        key = json.dumps(config or {}, sort_keys=True)
        server = self.running.get(key)
        if server is None or server.process.poll() is not None:
            folder = self.folder / f"s{len(self.running)}"
            folder.mkdir()
            server = start_server(folder, config or {})
            self.running[key] = server
        return server

    def stop(self) -> None:
        for server in self.running.values():
            if server.process.poll() is None:
                server.process.kill()
                server.process.wait()


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerPool]:
    pool = ServerPool(tmp_path_factory.mktemp("hostile"))
    yield pool
    pool.stop()
