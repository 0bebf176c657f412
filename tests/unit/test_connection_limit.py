"""The default connection limit: the descriptor limit less one accept burst and a tenth."""

from __future__ import annotations

import resource

from smtp_tarpit.server.sizing import connection_limit, listen_backlog


def test_the_listen_backlog_is_an_eighth_of_the_descriptors_within_128_and_4096() -> None:
    assert [listen_backlog(n) for n in (512, 20_000, 1_048_576)] == [128, 2500, 4096]


def test_a_configured_limit_is_taken_as_it_is() -> None:
    assert connection_limit(77) == 77


def test_the_default_leaves_room_for_an_accept_burst_and_other_files() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))
        assert connection_limit(0) == 512 - 128 - 51  # 333: what bench/fd_limit.py measured as clean
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(20_000, hard), hard))
        if hard >= 20_000:
            assert connection_limit(0) == 20_000 - 2500 - 1000  # 10,000 held and 6,500 more fit
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
