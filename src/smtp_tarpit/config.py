"""The typed configuration: every option declared once, with its unit, bounds and default.

Invariants:
- The built-in defaults are the seed's behaviour (tar pit off); a config file is layered over them, key by
  key, never over the shipped example config.
- Unknown keys, wrong types, out-of-range values and unreadable files are ``ConfigError``s whose message
  names the file and the key, e.g. ``smtp-tarpit.toml: [tarpit] dealy: unknown key``.
- Durations are seconds (a number, or a string with a unit: ms, s, m, h, d); sizes are octets (a number, or
  a string with a unit: KB, MB, GB, KiB, MiB, GiB). Relative paths resolve against the config file's folder.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from smtp_tarpit.delivery.relay import parse_relay
from smtp_tarpit.dnscheck import parse_server

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}
_NUMBER_UNIT = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*")


class ConfigError(Exception):
    """A configuration problem, with a message naming the file and the key."""


def _duration(value: object) -> object:
    if isinstance(value, str):
        match = _NUMBER_UNIT.fullmatch(value)
        unit = match.group(2).lower() if match else ""
        if not match or unit not in _DURATION_UNITS:
            raise ValueError("expected seconds, or a number with a unit: ms, s, m, h, d (e.g. '250ms', '5s')")
        return float(match.group(1)) * _DURATION_UNITS[unit]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("expected seconds, or a number with a unit: ms, s, m, h, d")
    return float(value)


def _size(value: object) -> object:
    if isinstance(value, str):
        match = _NUMBER_UNIT.fullmatch(value)
        unit = match.group(2).lower() if match else ""
        if not match or unit not in _SIZE_UNITS:
            raise ValueError("expected octets, or a number with a unit: KB, MB, GB, KiB, MiB, GiB")
        return int(float(match.group(1)) * _SIZE_UNITS[unit])
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("expected octets, or a number with a unit: KB, MB, GB, KiB, MiB, GiB")
    return value


def _network(value: object) -> object:
    if not isinstance(value, str):
        raise ValueError("expected a CIDR string such as '192.0.2.0/24' or '2001:db8::/32'")
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError as exc:
        raise ValueError(f"not an IP network: {value!r}") from exc


def _listen(value: object) -> object:
    if not isinstance(value, str):
        raise ValueError("expected 'host:port' or '[ipv6]:port'")
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\[\]]+):(\d{1,5})", value)
    if not match:
        raise ValueError(f"expected 'host:port' or '[ipv6]:port', got {value!r}")
    port = int(match.group(2) or match.group(4))
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range in {value!r}")
    return value


Seconds = Annotated[float, BeforeValidator(_duration)]
Octets = Annotated[int, BeforeValidator(_size)]
Network = Annotated[ipaddress.IPv4Network | ipaddress.IPv6Network, BeforeValidator(_network)]
ListenAddress = Annotated[str, BeforeValidator(_listen)]


def _zone_names(zones: list[str]) -> list[str]:
    for zone in zones:
        if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9.\-]*[A-Za-z0-9])?\.?", zone):
            raise ValueError(f"not a DNS zone name: {zone!r}")
    return [z.lower().rstrip(".") for z in zones]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, arbitrary_types_allowed=True)


class ServerConfig(Section):
    listen: list[ListenAddress] = Field(default=["127.0.0.1:2525"], min_length=1)
    hostname: str = Field(
        default_factory=socket.getfqdn, min_length=1, max_length=255, pattern=r"^[A-Za-z0-9.\-]+$"
    )
    bare_newline: Literal["normalize", "reject"] = "normalize"
    shutdown_grace: Seconds = Field(default=30.0, ge=0, le=600)
    proxy_protocol_from: list[Network] = []
    uvloop: bool = True
    reuse_port: bool = False  # SO_REUSEPORT: several processes on one address and port (a restart applies it)


class LimitsConfig(Section):
    command_line: int = Field(default=512, ge=512, le=65536)
    text_line: int = Field(default=1000, ge=1000, le=1_000_000)
    message_size: Octets = Field(default=10 * 1024 * 1024, ge=1024, le=2**31)
    recipients_per_message: int = Field(default=100, ge=1, le=100_000)
    idle_timeout: Seconds = Field(default=300.0, ge=1, le=3600)
    max_connections: int = Field(default=0, ge=0, le=1_000_000)  # 0: the descriptor limit less a reserve
    connections_per_client: int = Field(default=50, ge=1, le=1_000_000)
    connections_per_network: int = Field(default=0, ge=0, le=1_000_000)
    max_tarpitted: int = Field(default=10_000, ge=1, le=1_000_000)
    junk_commands: int = Field(default=100, ge=0, le=100_000)
    command_timeout: Seconds = Field(default=60.0, ge=1, le=3600)
    min_data_rate: int = Field(default=500, ge=0, le=100_000_000)
    min_free_space: Octets = Field(default=100 * 1024 * 1024, ge=0, le=2**40)
    message_memory: Octets = Field(default=256 * 1024 * 1024, ge=1024 * 1024, le=2**40)
    overload: Literal["auto", "on", "off"] = "auto"
    overload_idle_timeout: Seconds = Field(default=10.0, ge=1, le=3600)
    overload_hard_error_limit: int = Field(default=1, ge=1, le=100_000)


class RecipientsConfig(Section):
    domains: list[str] = []
    file: Path | None = None
    verify: Literal["file", "downstream"] = "file"
    verify_connections: int = Field(default=2, ge=1, le=100)
    verify_positive_ttl: Seconds = Field(default=86400.0, ge=1, le=30 * 86400)
    verify_negative_ttl: Seconds = Field(default=3600.0, ge=1, le=30 * 86400)
    verify_cache_size: int = Field(default=100_000, ge=100, le=10_000_000)

    @field_validator("domains")
    @classmethod
    def _lower(cls, domains: list[str]) -> list[str]:
        for domain in domains:
            if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9.\-]*[A-Za-z0-9])?", domain):
                raise ValueError(f"not a domain name: {domain!r}")
        return [d.lower() for d in domains]


class DeliveryConfig(Section):
    maildir: Path = Path("mail")
    maildir_writers: int = Field(default=1, ge=1, le=32)
    relay: str = ""
    relay_timeout: Seconds = Field(default=60.0, ge=1, le=600)
    relay_connections: int = Field(default=100, ge=1, le=10_000)
    relay_tls_verify: bool = True
    relay_ca_file: Path | None = None

    @field_validator("relay")
    @classmethod
    def _relay(cls, value: str) -> str:
        if value:
            parse_relay(value)  # raises ValueError saying what is wrong
        return value


class TarpitConfig(Section):
    # Capped at 240 s: RFC 5321 4.5.3.2 gives clients 5 minutes for a MAIL or RCPT reply, and a legitimate
    # sender that hits an error must get its 5xx before it times out, or it retries instead of bouncing.
    delay: Seconds = Field(default=0.0, ge=0, le=240)
    exempt_networks: list[Network] = []
    exempt_hostnames: list[str] = []
    growth: float = Field(default=1.0, ge=1, le=10)
    max_delay: Seconds = Field(default=60.0, ge=0, le=240)
    session_budget: Seconds = Field(default=1200.0, ge=1, le=86400)
    hard_error_limit: int = Field(default=20, ge=0, le=100_000)
    mode: Literal["enforce", "watch"] = "enforce"
    stutter: bool = False
    stutter_interval: Seconds = Field(default=1.0, ge=0.05, le=60)
    auth_failure_delay: Seconds | None = Field(default=None, ge=0, le=240)
    exempt_dnswl: list[str] = []

    @field_validator("exempt_dnswl")
    @classmethod
    def _zones(cls, zones: list[str]) -> list[str]:
        return _zone_names(zones)

    @field_validator("exempt_hostnames")
    @classmethod
    def _hostnames(cls, names: list[str]) -> list[str]:
        for name in names:
            if not re.fullmatch(r"\.?[A-Za-z0-9](?:[A-Za-z0-9.\-]*[A-Za-z0-9])?", name):
                raise ValueError(f"not a host name or '.suffix': {name!r}")
        return [n.lower() for n in names]


class HarvestConfig(Section):
    threshold: int = Field(default=0, ge=0, le=1000)
    window: Seconds = Field(default=3600.0, ge=1, le=30 * 86400)
    hold_for: Seconds = Field(default=3600.0, ge=1, le=30 * 86400)
    action: Literal["tempfail", "accept-then-defer"] = "tempfail"
    delay: Seconds = Field(default=30.0, ge=0, le=240)


_STORE_SCHEMES = ("memory", "sqlite://", "redis://", "rediss://", "unix://")


class ReputationConfig(Section):
    store: str = "memory"
    store_timeout: Seconds = Field(default=0.25, ge=0.01, le=5)
    store_retry_after: Seconds = Field(default=5.0, ge=0.1, le=3600)
    snapshot: Path | None = None
    snapshot_interval: Seconds = Field(default=0.0, ge=0, le=86400)
    redis_sentinels: list[str] = []
    redis_sentinel_master: str = Field(default="mymaster", min_length=1, max_length=200)
    redis_cluster: bool = False
    redis_key_prefix: str = Field(default="smtp-tarpit:", max_length=100, pattern=r"^[A-Za-z0-9_.:-]*$")
    half_life: Seconds = Field(default=0.0, ge=0, le=365 * 86400)
    prefix_v4: int = Field(default=24, ge=8, le=32)
    prefix_v6: int = Field(default=64, ge=16, le=128)
    prefix_weight: float = Field(default=0.5, ge=0, le=1)
    max_score: float = Field(default=100.0, ge=1, le=10_000)
    max_entries: int = Field(default=100_000, ge=100, le=100_000_000)
    dnsbl: list[str] = []
    dnsbl_score: float = Field(default=3.0, ge=0, le=100)

    @field_validator("dnsbl")
    @classmethod
    def _zones(cls, zones: list[str]) -> list[str]:
        return _zone_names(zones)

    @field_validator("store")
    @classmethod
    def _store(cls, store: str) -> str:
        if store == "memory" or (store.startswith(_STORE_SCHEMES[1:]) and store.partition("://")[2]):
            return store
        raise ValueError(
            'expected "memory", "sqlite:///path/state.db", "redis://host:port/db", "rediss://..." or '
            '"unix:///path/redis.sock"'
        )

    @field_validator("redis_sentinels")
    @classmethod
    def _sentinels(cls, sentinels: list[str]) -> list[str]:
        for sentinel in sentinels:
            _listen(sentinel)  # raises ValueError naming the expected form
        return sentinels

    @model_validator(mode="after")
    def _redis_only(self) -> ReputationConfig:
        redis = self.store.startswith(("redis://", "rediss://", "unix://"))
        if (self.redis_sentinels or self.redis_cluster) and not redis:
            raise ValueError("redis_sentinels and redis_cluster need a redis:// store")
        if self.redis_sentinels and self.redis_cluster:
            raise ValueError("redis_sentinels and redis_cluster cannot be used together")
        if self.snapshot is not None and self.store != "memory":
            raise ValueError("snapshot is for the memory store (sqlite and redis keep their own state)")
        return self

    @property
    def sqlite_path(self) -> Path | None:
        """The database file of a ``sqlite://`` store (``sqlite:///var/lib/x.db`` is /var/lib/x.db)."""
        return Path(self.store.removeprefix("sqlite://")) if self.store.startswith("sqlite://") else None


class DnsConfig(Section):
    servers: list[str] = []
    timeout: Seconds = Field(default=1.0, ge=0.05, le=10)

    @field_validator("servers")
    @classmethod
    def _servers(cls, servers: list[str]) -> list[str]:
        for server in servers:
            parse_server(server)  # raises ValueError with the reason
        return servers


class GreetConfig(Section):
    pause: Seconds = Field(default=0.0, ge=0, le=240)
    teaser: bool = False


class AdminConfig(Section):
    socket: Path = Path("admin.sock")
    listen: str = ""
    token: str = Field(default="", max_length=256)

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        return "" if value == "" else str(_listen(value))


class TlsConfig(Section):
    certificate: Path | None = None
    private_key: Path | None = None

    @model_validator(mode="after")
    def _both_or_neither(self) -> TlsConfig:
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("certificate and private_key must be set together")
        return self


class AuthConfig(Section):
    users_file: Path | None = None
    plaintext_from_loopback: bool = False


class LogConfig(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


class Config(Section):
    server: ServerConfig = ServerConfig()
    limits: LimitsConfig = LimitsConfig()
    recipients: RecipientsConfig = RecipientsConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    tarpit: TarpitConfig = TarpitConfig()
    harvest: HarvestConfig = HarvestConfig()
    reputation: ReputationConfig = ReputationConfig()
    greet: GreetConfig = GreetConfig()
    admin: AdminConfig = AdminConfig()
    dns: DnsConfig = DnsConfig()
    tls: TlsConfig = TlsConfig()
    auth: AuthConfig = AuthConfig()
    log: LogConfig = LogConfig()
    source: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _verify_needs_a_relay(self) -> Config:
        relay = self.delivery.relay
        if self.recipients.verify == "downstream" and not (
            relay and parse_relay(relay).scheme.startswith("smtp")
        ):
            raise ValueError('[recipients] verify = "downstream" needs [delivery] relay = "smtp://host:port"')
        return self


_PATH_KEYS = (
    ("recipients", "file"),
    ("delivery", "maildir"),
    ("tls", "certificate"),
    ("tls", "private_key"),
    ("auth", "users_file"),
    ("admin", "socket"),
    ("delivery", "relay_ca_file"),
    ("reputation", "snapshot"),
)


def load(path: Path | None) -> Config:
    """Read and validate a config file layered over the built-in defaults (None: defaults only)."""
    if path is None:
        return Config()
    raw = _read_toml(path)
    _reject_non_tables(path, raw)
    _stringify_paths(raw)
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError("\n".join(_describe(path, err) for err in exc.errors())) from None
    return _resolve_paths(config, path)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def _reject_non_tables(path: Path, raw: dict[str, Any]) -> None:
    for key, value in raw.items():
        if key not in Config.model_fields or key == "source":
            raise ConfigError(f"{path}: [{key}]: unknown section")
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: {key}: must be a table, as [{key}]")


def _stringify_paths(raw: dict[str, Any]) -> None:
    # Strict mode wants Path objects for Path fields; TOML gives strings. Convert only those keys.
    for section, key in _PATH_KEYS:
        value = raw.get(section, {}).get(key)
        if isinstance(value, str):
            raw[section][key] = Path(value)


def _describe(path: Path, err: Any) -> str:
    loc = [str(p) for p in err["loc"]]
    message = "unknown key" if err["type"] == "extra_forbidden" else _message(err)
    if not loc:  # a rule across sections: its message names the keys
        return f"{path}: {message}"
    where = f"[{loc[0]}] {'.'.join(loc[1:])}" if len(loc) > 1 else f"[{loc[0]}]"
    return f"{path}: {where}: {message}"


def _message(err: Any) -> str:
    message = str(err["msg"])
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    if err["type"] in ("is_instance_of", "path_type"):
        message = "expected a path string"
    return message


def _resolve_paths(config: Config, path: Path) -> Config:
    base = path.resolve().parent
    updates: dict[str, Section] = {}
    for section, key in _PATH_KEYS:
        current = updates.get(section, getattr(config, section))
        value = getattr(current, key)
        if value is not None and not value.is_absolute():
            updates[section] = current.model_copy(update={key: base / value})
    reputation = updates.get("reputation", config.reputation)
    assert isinstance(reputation, ReputationConfig)
    database = reputation.sqlite_path
    if database is not None and not database.is_absolute():
        updates["reputation"] = reputation.model_copy(update={"store": f"sqlite://{base / database}"})
    return config.model_copy(update={**updates, "source": path})
