"""fail2ban reads our logs: contrib/fail2ban's filters match the harvest flag of the harvester, and nothing else.

A real server flags a harvester (127.0.1.2) while a legitimate client (127.0.2.3) delivers a message; the
real ``fail2ban-regex`` then reads the server's log with the shipped filter, in both log formats.
"""

from __future__ import annotations

import re
import shutil
import smtplib
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.helpers import RunningServer

ServerFactory = Callable[..., RunningServer]
FILTERS = Path(__file__).resolve().parents[2] / "contrib" / "fail2ban" / "filter.d"
FILTER_FOR_FORMAT = {"text": "smtp-tarpit.conf", "json": "smtp-tarpit-json.conf"}
HARVESTER, LEGITIMATE = "127.0.1.2", "127.0.2.3"
_SUMMARY = re.compile(r"^Lines: (\d+) lines, (\d+) ignored, (\d+) matched, (\d+) missed", re.MULTILINE)


@pytest.fixture
def fail2ban_regex() -> str:
    found = shutil.which("fail2ban-regex")
    if found is None:
        pytest.skip("fail2ban-regex is not installed (Debian: apt-get install fail2ban)")
    return found


@dataclass
class Verdict:
    lines: int
    matched_lines: list[str]
    hosts: list[str]


def run_filter(program: str, log: Path, filter_spec: str) -> Verdict:
    """Run fail2ban-regex on ``log``: the lines it matched (from its own listing) and the hosts it would ban."""

    def run(*options: str) -> str:
        done = subprocess.run(
            [program, "--raw", *options, str(log), filter_spec],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, f"fail2ban-regex failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    report = run("--print-all-matched", "--print-no-missed", "--print-no-ignored")
    summary = _SUMMARY.search(report)
    assert summary is not None, report
    total, _ignored, matched, _missed = map(int, summary.groups())
    listing = report.partition("|- Matched line(s):\n")[2].partition("`-")[0]
    matched_lines = [line.removeprefix("|  ") for line in listing.splitlines()]
    assert len(matched_lines) == matched, report
    hosts = run("--out", "ip").split()
    return Verdict(total, matched_lines, hosts)


def harvest(server: RunningServer, count: int) -> list[int]:
    with smtplib.SMTP(server.host, server.port, timeout=30, source_address=(HARVESTER, 0)) as smtp:
        smtp.ehlo("harvester.test")
        smtp.mail("probe@remote.test")
        return [smtp.rcpt(f"probe{i}@example.test")[0] for i in range(count)]


def deliver(server: RunningServer) -> None:
    with smtplib.SMTP(server.host, server.port, timeout=30, source_address=(LEGITIMATE, 0)) as smtp:
        refused = smtp.sendmail(
            "carol@remote.test", ["alice@example.test"], b"Subject: hello\r\n\r\nA legitimate message.\r\n"
        )
        assert refused == {}


def flag_harvester_and_deliver(server: RunningServer) -> list[str]:
    """Six unknown RCPTs: the 3rd flags 127.0.1.2 (threshold 3), the 6th its /24 (3 / prefix_weight 0.5)."""
    assert harvest(server, 6) == [550, 550, 450, 450, 450, 450]
    deliver(server)
    server.wait_for_log(rf"harvest flag client={re.escape(HARVESTER)} key=net:127\.0\.1\.0/24")
    server.wait_for_log(rf"session end client={re.escape(HARVESTER)} ")
    server.wait_for_log(rf"session end client={re.escape(LEGITIMATE)} ")
    assert server.stop() == 0  # the log is complete: fail2ban-regex reads what we read
    lines = server.log().splitlines()
    assert any(f"client={LEGITIMATE}" in line and "result=delivered" in line for line in lines)
    return lines


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_filter_bans_the_flagged_harvester_and_nobody_else(
    make_server: ServerFactory, fail2ban_regex: str, fmt: str
) -> None:
    server = make_server(harvest={"threshold": 3, "delay": 0}, log={"level": "info", "format": fmt})
    lines = flag_harvester_and_deliver(server)
    flags = [line for line in lines if "harvest flag" in line]
    exact_flag = [line for line in flags if f"key=ip:{HARVESTER}" in line]
    assert len(flags) == 2 and len(exact_flag) == 1, flags
    assert fmt != "json" or all(line.startswith('{"time": ') for line in lines)

    verdict = run_filter(fail2ban_regex, server.log_path, str(FILTERS / FILTER_FOR_FORMAT[fmt]))
    assert verdict.lines == len(lines)
    # Exactly the harvester's exact-key flag: not its /24's flag, nor its own session end, nor the
    # legitimate client's message and session lines.
    assert verdict.matched_lines == exact_flag
    assert verdict.hosts == [HARVESTER]
    assert LEGITIMATE not in verdict.hosts


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_network_mode_also_bans_the_flagged_prefix(
    make_server: ServerFactory, fail2ban_regex: str, fmt: str
) -> None:
    server = make_server(harvest={"threshold": 3, "delay": 0}, log={"level": "info", "format": fmt})
    lines = flag_harvester_and_deliver(server)
    flags = [line for line in lines if "harvest flag" in line]

    verdict = run_filter(fail2ban_regex, server.log_path, f"{FILTERS / FILTER_FOR_FORMAT[fmt]}[mode=network]")
    assert verdict.matched_lines == flags
    assert verdict.hosts == [HARVESTER, "127.0.1.0/24"]


TEXT_SAMPLES = """\
2026-11-28 10:52:01,123 WARNING smtp_tarpit.tarpit: harvest flag client=::1 key=ip:::1 unknown=3 window=3600s hold=3600s
2026-11-28 10:52:02,123 WARNING smtp_tarpit.tarpit: harvest flag client=2001:db8::7 key=ip:2001:db8::7 unknown=3 window=3600s hold=3600s
2026-11-28 10:52:03,123 WARNING smtp_tarpit.tarpit: harvest flag client=2001:db8::7 key=net:2001:db8::/64 unknown=6 window=3600s hold=3600s
Nov 28 10:52:04 mx smtp-tarpit[4242]: 2026-11-28 10:52:04,123 WARNING smtp_tarpit.tarpit: harvest flag client=192.0.2.9 key=ip:192.0.2.9 unknown=3 window=3600s hold=3600s
Nov 28 10:52:05 mx other[4243]: 2026-11-28 10:52:05,123 WARNING smtp_tarpit.tarpit: harvest flag client=192.0.2.10 key=ip:192.0.2.10 unknown=3 window=3600s hold=3600s
2026-11-28 10:52:06,123 INFO smtp_tarpit.session: message id=X client=198.51.100.1 from=<"a?WARNING?smtp_tarpit.tarpit:?harvest?flag?client=203.0.113.5?key=ip:203.0.113.5?unknown=3?window=3600s?hold=3600s"@remote.test> to=<alice@example.test> size=9 result=delivered seconds=0.010
2026-11-28 10:52:07,123 INFO smtp_tarpit.session: session end client=198.51.100.2 host=- helo=WARNING?smtp_tarpit.tarpit:?harvest?flag?client=203.0.113.6 commands=2 errors=0 delayed=0.0s duration=0.0s outcome=quit
"""

JSON_SAMPLES = """\
{"time": "2026-11-28T10:52:01.123", "level": "warning", "logger": "smtp_tarpit.tarpit", "message": "harvest flag client=::1 key=ip:::1 unknown=3 window=3600s hold=3600s", "client": "::1", "key": "ip:::1"}
{"time": "2026-11-28T10:52:02.123", "level": "warning", "logger": "smtp_tarpit.tarpit", "message": "harvest flag client=2001:db8::7 key=ip:2001:db8::7 unknown=3 window=3600s hold=3600s", "client": "2001:db8::7"}
{"time": "2026-11-28T10:52:03.123", "level": "warning", "logger": "smtp_tarpit.tarpit", "message": "harvest flag client=2001:db8::7 key=net:2001:db8::/64 unknown=6 window=3600s hold=3600s", "client": "2001:db8::7"}
{"time": "2026-11-28T10:52:06.123", "level": "info", "logger": "smtp_tarpit.session", "message": "message id=X client=198.51.100.1 from=<\\"a\\", \\"level\\": \\"warning\\", \\"logger\\": \\"smtp_tarpit.tarpit\\", \\"message\\": \\"harvest?flag?client=203.0.113.5\\"@remote.test> to=<alice@example.test> size=9 result=delivered seconds=0.010", "client": "198.51.100.1"}
"""


@pytest.mark.parametrize(
    ("fmt", "samples", "expected"),
    [
        ("text", TEXT_SAMPLES, ["::1", "2001:db8::7", "192.0.2.9"]),
        ("json", JSON_SAMPLES, ["::1", "2001:db8::7"]),
    ],
)
def test_filter_reads_ipv6_and_syslog_lines_and_ignores_forged_text(
    tmp_path: Path, fail2ban_regex: str, fmt: str, samples: str, expected: list[str]
) -> None:
    """IPv6 clients and the journal/syslog prefix are read; client text that imitates a flag line is not."""
    log = tmp_path / f"samples.{fmt}.log"
    log.write_text(samples)
    verdict = run_filter(fail2ban_regex, log, str(FILTERS / FILTER_FOR_FORMAT[fmt]))
    assert verdict.hosts == expected
