"""``[reputation] store`` to a store (state/open.py): each kind opens; anything unusable is a ValueError
naming the setting, at startup, without repeating a password."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from smtp_tarpit.config import ReputationConfig
from smtp_tarpit.policy.settings import PolicySettings
from smtp_tarpit.state.open import open_store, redact
from smtp_tarpit.state.redis import RedisStore
from smtp_tarpit.state.sqlite import SqliteStore

SETTINGS = PolicySettings()


def opened(**options: Any) -> Any:
    return open_store(ReputationConfig(**options), SETTINGS)


def close(store: Any) -> None:
    asyncio.run(store.close())


def test_memory_means_no_shared_store() -> None:
    assert opened() is None
    assert opened(store="memory") is None


def test_sqlite_opens_the_file_named(tmp_path: Path) -> None:
    store = opened(store=f"sqlite://{tmp_path}/state.db", store_timeout=0.5)
    try:
        assert isinstance(store, SqliteStore)
        assert store.path == tmp_path / "state.db"
        assert store.busy_timeout == 0.5
        assert (tmp_path / "state.db").exists()
    finally:
        close(store)


@pytest.mark.parametrize(
    ("store", "reason"),
    [
        (
            "sqlite:///nonexistent-folder-for-tests/state.db",
            "directory /nonexistent-folder-for-tests does not exist",
        ),
        ("sqlite:///tmp/state.db?mode=ro", "options after '\\?'"),
        ("sqlite:///", "no database file"),
        ("redis://127.0.0.1:6379/zero", "database in the store URL is not a number"),
        ("redis://127.0.0.1:6379/0?socket_timeout=30", "unsupported option.*socket_timeout"),
        ("redis://127.0.0.1:6379/0?retry_on_timeout=yes", "unsupported option.*retry_on_timeout"),
    ],
)
def test_an_unusable_store_is_refused_naming_the_setting(store: str, reason: str) -> None:
    with pytest.raises(ValueError, match=r"^\[reputation\] store .*" + reason):
        opened(store=store)


def test_a_password_is_not_repeated_in_the_message() -> None:
    with pytest.raises(ValueError, match="unsupported") as refused:
        opened(store="redis://user:s3cret@127.0.0.1:6379/0?bogus=1")
    assert "s3cret" not in str(refused.value)
    assert "user:***@" in str(refused.value)
    assert redact("redis://:pw@host/0") == "redis://:***@host/0"
    assert redact("redis://host/0") == "redis://host/0"


def test_redis_kinds_open_without_connecting() -> None:
    # Nothing listens on port 1: building a store must not touch the network.
    plain = opened(store="redis://127.0.0.1:1/3", redis_key_prefix="mx:")
    sentinel = opened(store="redis://:pw@ignored/2", redis_sentinels=["127.0.0.1:1", "[::1]:2"])
    cluster = opened(store="redis://127.0.0.1:1", redis_cluster=True)
    unix = opened(store="unix:///run/redis/redis.sock?db=1")
    try:
        for store in (plain, sentinel, cluster, unix):
            assert isinstance(store, RedisStore)
        assert plain.prefix == "mx:"
    finally:
        for store in (plain, sentinel, cluster, unix):
            close(store)


@pytest.mark.parametrize(
    ("store", "reason"),
    [("redis://127.0.0.1:1/1", "only database 0"), ("unix:///run/redis.sock", "over TCP")],
)
def test_a_cluster_needs_tcp_and_database_zero(store: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        opened(store=store, redis_cluster=True)
