"""Fixtures that run real smtp-tarpit processes on loopback, stopped by PID after each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.helpers import RunningServer, start_server

ServerFactory = Callable[..., RunningServer]


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[ServerFactory]:
    started: list[RunningServer] = []

    def factory(**overrides: dict[str, Any]) -> RunningServer:
        folder = tmp_path / f"server{len(started)}"
        folder.mkdir()
        server = start_server(folder, overrides)
        started.append(server)
        return server

    yield factory
    for server in started:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()


@pytest.fixture
def server(make_server: ServerFactory) -> RunningServer:
    return make_server()
