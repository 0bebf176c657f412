"""Several MX hosts, one Redis: a shared view of the clients, and mail that keeps flowing when Redis fails.

Real redis-server processes (tests/state/redis_server.py), real smtp-tarpit processes, smtplib clients.
"""

from __future__ import annotations

import json
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from smtp_tarpit.server import admin
from tests.e2e.helpers import RunningServer, start_server
from tests.polling import wait_until
from tests.state.redis_server import RedisProcess, client, require_redis, start_redis

HARVESTER, SENDER = "127.0.1.2", "127.0.2.3"
DELAY, STORE_TIMEOUT = 0.5, 0.25
SLACK = 1.0  # scheduling on a busy 2-core CI machine; the point is "not 4 s, not forever"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisProcess]:
    require_redis()
    (tmp_path / "redis").mkdir()
    process = start_redis(tmp_path / "redis")
    try:
        yield process
    finally:
        process.stop()


def _start(folder: Path, redis: RedisProcess, **sections: dict[str, Any]) -> RunningServer:
    folder.mkdir()
    overrides: dict[str, dict[str, Any]] = {
        "harvest": {"threshold": 3, "delay": 0},
        "reputation": {
            "store": redis.url,
            "store_timeout": f"{int(STORE_TIMEOUT * 1000)}ms",
            "store_retry_after": "1s",
        },
    }
    for section, values in sections.items():
        overrides.setdefault(section, {}).update(values)
    return start_server(folder, overrides)


def _timed_session(server: RunningServer, source: str, recipients: list[str]) -> tuple[list[int], float]:
    """Codes of each RCPT, and the longest any single reply took (greeting included)."""
    longest, codes = 0.0, []
    started = time.monotonic()
    with smtplib.SMTP(server.host, server.port, timeout=30, source_address=(source, 0)) as smtp:
        longest = time.monotonic() - started  # connect and greeting
        for step in (lambda: smtp.ehlo("client.test"), lambda: smtp.mail("s@remote.test")):
            started = time.monotonic()
            step()
            longest = max(longest, time.monotonic() - started)
        for recipient in recipients:
            started = time.monotonic()
            codes.append(smtp.rcpt(recipient)[0])
            longest = max(longest, time.monotonic() - started)
        if 250 in codes:
            started = time.monotonic()
            code, _ = smtp.data(b"Subject: through a failing store\r\n\r\nhello\r\n")
            longest = max(longest, time.monotonic() - started)
            codes.append(code)
    return codes, longest


def _wait_flagged_in_redis(redis: RedisProcess, address: str) -> None:
    with client(redis.port) as probe:

        def flagged() -> bool:
            record = probe.get(f"smtp-tarpit:ip:{address}")
            return record is not None and json.loads(record)["f"] > time.time()

        assert wait_until(flagged, timeout=10), f"the flag of {address} never reached Redis"


def test_flagged_through_host_a_is_flagged_on_host_b_at_its_first_rcpt(
    tmp_path: Path, redis_server: RedisProcess
) -> None:
    a = _start(tmp_path / "a", redis_server)
    b = _start(tmp_path / "b", redis_server)
    try:
        codes, _ = _timed_session(a, HARVESTER, [f"guess{i}@example.test" for i in range(3)])
        assert codes == [550, 550, 450]
        a.wait_for_log(f"harvest flag client={HARVESTER}")
        _wait_flagged_in_redis(redis_server, HARVESTER)  # A writes beside the session, not before replying
        assert _timed_session(b, HARVESTER, ["alice@example.test"])[0] == [450]  # never seen on B before
        assert _timed_session(b, SENDER, ["alice@example.test"])[0] == [250, 250]
        keys = {key.decode() for key in client(redis_server.port).keys("*")}
        assert f"smtp-tarpit:ip:{HARVESTER}" in keys and "smtp-tarpit:net:127.0.1.0/24" in keys
        # Forgotten through B's admin socket: forgotten in Redis, so A lets it in again too.
        answer = admin.request(b.folder / "admin.sock", "forget", HARVESTER)
        assert answer["forgotten"] == [f"ip:{HARVESTER}", "net:127.0.1.0/24"]
        assert not client(redis_server.port).keys("*")
        assert _timed_session(a, HARVESTER, ["alice@example.test"])[0] == [250, 250]
    finally:
        a.stop()
        b.stop()


def test_a_hung_redis_costs_at_most_one_store_timeout_and_mail_flows(
    tmp_path: Path, redis_server: RedisProcess
) -> None:
    server = _start(tmp_path / "a", redis_server, tarpit={"delay": DELAY})
    try:
        redis_server.pause()  # SIGSTOP: connections are accepted, nothing is answered
        for source in (HARVESTER, SENDER, HARVESTER):
            codes, longest = _timed_session(server, source, ["nobody@example.test", "alice@example.test"])
            assert codes == [550, 250, 250]
            assert longest <= DELAY + STORE_TIMEOUT + SLACK, longest
        assert len(server.messages()) == 3
        server.wait_for_log(r"client store redis://127\.0\.0\.1:\d+/0 failed \(\w+: timed out\)")
        assert server.log().count("client store") == 1  # one line for the whole episode

        redis_server.resume()
        time.sleep(1.2)  # past store_retry_after: the next session uses Redis again
        assert _timed_session(server, SENDER, ["ghost@example.test"])[0] == [550]
        server.wait_for_log("answers again: using it")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not client(redis_server.port).exists(
            f"smtp-tarpit:ip:{SENDER}"
        ):
            time.sleep(0.05)
        assert client(redis_server.port).exists(f"smtp-tarpit:ip:{SENDER}")
    finally:
        redis_server.resume()
        server.stop()


def test_a_stopped_redis_fails_fast_and_mail_flows(tmp_path: Path, redis_server: RedisProcess) -> None:
    server = _start(tmp_path / "a", redis_server, tarpit={"delay": DELAY})
    try:
        assert _timed_session(server, SENDER, ["alice@example.test"])[0] == [250, 250]
        redis_server.stop()  # connection refused from now on
        for source in (HARVESTER, SENDER):
            codes, longest = _timed_session(server, source, ["nobody@example.test", "alice@example.test"])
            assert codes == [550, 250, 250]
            assert longest <= DELAY + STORE_TIMEOUT + SLACK, longest
        assert len(server.messages()) == 3
        server.wait_for_log(r"client store redis://\S+ failed")
    finally:
        server.stop()


def test_what_was_seen_while_redis_was_away_reaches_it_when_it_is_back(
    tmp_path: Path, redis_server: RedisProcess
) -> None:
    server = _start(tmp_path / "a", redis_server, harvest={"threshold": 100})
    try:
        with smtplib.SMTP(server.host, server.port, timeout=30, source_address=(HARVESTER, 0)) as smtp:
            smtp.ehlo("client.test")
            smtp.mail("s@remote.test")
            redis_server.pause()
            codes = [smtp.rcpt(f"away{i}@example.test")[0] for i in range(5)]  # kept locally meanwhile
            time.sleep(STORE_TIMEOUT * 2)  # their writes time out: the server sees the outage
            redis_server.resume()
            time.sleep(1.2)  # past store_retry_after
            codes.append(smtp.rcpt("back@example.test")[0])  # the first write after the outage
        assert codes == [550] * 6
        key = f"smtp-tarpit:ip:{HARVESTER}"
        deadline = time.monotonic() + 5
        seen = 0
        while time.monotonic() < deadline and seen < 6:
            raw = client(redis_server.port).get(key)
            seen = json.loads(raw)["c"].get("unknown-recipient", 0) if raw else 0
            time.sleep(0.05)
        assert seen == 6  # the five from the outage were merged in, not replaced by the store's answer
    finally:
        redis_server.resume()
        server.stop()
