"""Everything a running server needs, built and checked from a Config (``check-config`` runs the same code).

Invariants: building either succeeds completely or raises ``ConfigError`` naming the file and key at fault;
a failed rebuild (SIGHUP) leaves the running server's runtime untouched.
"""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from smtp_tarpit.auth.passwords import Users, UsersFileError, load_users
from smtp_tarpit.config import Config, ConfigError
from smtp_tarpit.delivery import Deliverer, DeliveryError
from smtp_tarpit.delivery.lmtp import LmtpDeliverer
from smtp_tarpit.delivery.maildir import MaildirDeliverer
from smtp_tarpit.delivery.relay import RelayDeliverer, parse_relay
from smtp_tarpit.directory import recipients
from smtp_tarpit.directory.downstream import RecipientVerifier
from smtp_tarpit.directory.recipients import Directory, DirectoryError
from smtp_tarpit.dnscheck import DnsChecker
from smtp_tarpit.policy.decisions import IPAddress
from smtp_tarpit.policy.settings import PolicySettings
from smtp_tarpit.protocol import Limits

MAX_UNIX_PATH = 107  # sun_path is 108 bytes on Linux, with the terminating NUL


@dataclass(frozen=True, slots=True)
class Runtime:
    config: Config
    directory: Directory
    users: Users | None
    tls: ssl.SSLContext | None
    deliverer: Deliverer
    settings: PolicySettings
    limits: Limits
    dns: DnsChecker | None = None
    verifier: RecipientVerifier | None = None

    def proxied(self, peer: IPAddress | None) -> bool:
        """Does this peer (a load balancer) send a PROXY header before SMTP starts?"""
        return peer is not None and any(peer in net for net in self.config.server.proxy_protocol_from)

    def exempt(self, client: IPAddress | None) -> bool:
        if client is None:
            return False
        return any(client in net for net in self.config.tarpit.exempt_networks)


def _where(config: Config) -> str:
    return str(config.source) if config.source else "<built-in defaults>"


def build(config: Config) -> Runtime:
    _check_admin_socket(config)
    _check_store(config)
    deliverer = _deliverer(config)
    limits = Limits(
        command_line=config.limits.command_line,
        text_line=config.limits.text_line,
        message_size=config.limits.message_size,
        recipients=config.limits.recipients_per_message,
        reject_bare_newline=config.server.bare_newline == "reject",
        junk_commands=config.limits.junk_commands,
    )
    return Runtime(
        config=config,
        directory=load_directory(config),
        users=_users(config),
        tls=_tls(config),
        deliverer=deliverer,
        settings=policy_settings(config),
        limits=limits,
        dns=_dns(config),
        verifier=_verifier(config),
    )


def _verifier(config: Config) -> RecipientVerifier | None:
    recipients = config.recipients
    if recipients.verify != "downstream":
        return None
    target = parse_relay(config.delivery.relay)
    return RecipientVerifier(
        target.host,
        target.port,
        hostname=config.server.hostname,
        timeout=config.delivery.relay_timeout,
        connections=recipients.verify_connections,
        positive_ttl=recipients.verify_positive_ttl,
        negative_ttl=recipients.verify_negative_ttl,
        cache_size=recipients.verify_cache_size,
        tls_context=_relay_tls(config),
    )


def _deliverer(config: Config) -> Deliverer:
    delivery = config.delivery
    if delivery.relay:
        target = parse_relay(delivery.relay)
        if target.scheme == "lmtp":
            return LmtpDeliverer(
                target,
                hostname=config.server.hostname,
                timeout=delivery.relay_timeout,
                connections=delivery.relay_connections,
            )
        return RelayDeliverer(
            target,
            hostname=config.server.hostname,
            timeout=delivery.relay_timeout,
            connections=delivery.relay_connections,
            tls_context=_relay_tls(config),
        )
    maildir = MaildirDeliverer(delivery.maildir, delivery.maildir_writers)
    try:
        maildir.check()
    except DeliveryError as exc:
        raise ConfigError(f"{_where(config)}: [delivery] maildir: {exc}") from None
    return maildir


def _relay_tls(config: Config) -> ssl.SSLContext | None:
    delivery = config.delivery
    if not delivery.relay.startswith("smtp+starttls:"):
        return None
    try:
        context = ssl.create_default_context(cafile=delivery.relay_ca_file)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or "unusable"
        raise ConfigError(f"{_where(config)}: [delivery] relay_ca_file: {reason}") from None
    if not delivery.relay_tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _check_admin_socket(config: Config) -> None:
    path = config.admin.socket
    if len(str(path).encode()) > MAX_UNIX_PATH:
        raise ConfigError(
            f"{_where(config)}: [admin] socket: {path} is longer than {MAX_UNIX_PATH} bytes, the limit of a "
            "Unix socket path: choose a shorter path"
        )
    if path.parent.exists() and not path.parent.is_dir():
        raise ConfigError(f"{_where(config)}: [admin] socket: {path.parent} is not a directory")


def _check_store(config: Config) -> None:
    """A SQLite store or snapshot goes in an existing folder (a Redis store is checked by using it: an
    unreachable Redis must not keep the server down, it only costs the shared view)."""
    reputation = config.reputation
    for key, path in (("store", reputation.sqlite_path), ("snapshot", reputation.snapshot)):
        if path is not None and not path.parent.is_dir():
            raise ConfigError(f"{_where(config)}: [reputation] {key}: {path.parent} is not a directory")


def _dns(config: Config) -> DnsChecker | None:
    """A DNS checker when any DNS-based list is configured (and only then: no lookups otherwise)."""
    if not (config.tarpit.exempt_hostnames or config.tarpit.exempt_dnswl or config.reputation.dnsbl):
        return None
    try:
        return DnsChecker(servers=config.dns.servers or None, timeout=config.dns.timeout)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"{_where(config)}: [dns] servers: {exc}") from None


def policy_settings(config: Config) -> PolicySettings:
    tarpit, harvest = config.tarpit, config.harvest
    return PolicySettings(
        delay=tarpit.delay,
        auth_failure_delay=tarpit.delay if tarpit.auth_failure_delay is None else tarpit.auth_failure_delay,
        growth=tarpit.growth,
        max_delay=tarpit.max_delay,
        session_budget=tarpit.session_budget,
        hard_error_limit=tarpit.hard_error_limit,
        watch=tarpit.mode == "watch",
        stutter=tarpit.stutter,
        stutter_interval=tarpit.stutter_interval,
        harvest_threshold=harvest.threshold,
        harvest_window=harvest.window,
        harvest_hold_for=harvest.hold_for,
        harvest_action=harvest.action,
        harvest_delay=harvest.delay,
        half_life=config.reputation.half_life,
        prefix_weight=config.reputation.prefix_weight,
        max_score=config.reputation.max_score,
    )


def load_directory(config: Config) -> Directory:
    path = config.recipients.file
    if path is None:
        return recipients.empty(config.recipients.domains)
    try:
        return recipients.load(config.recipients.domains, path)
    except OSError as exc:
        raise ConfigError(
            f"{_where(config)}: [recipients] file: cannot read {path}: {exc.strerror}"
        ) from None
    except (DirectoryError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{_where(config)}: [recipients] file: {exc}") from None


def _users(config: Config) -> Users | None:
    path = config.auth.users_file
    if path is None:
        return None
    try:
        return load_users(path)
    except OSError as exc:
        raise ConfigError(
            f"{_where(config)}: [auth] users_file: cannot read {path}: {exc.strerror}"
        ) from None
    except (UsersFileError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{_where(config)}: [auth] users_file: {exc}") from None


def _tls(config: Config) -> ssl.SSLContext | None:
    cert, key = config.tls.certificate, config.tls.private_key
    if cert is None or key is None:
        return None
    for name, path in (("certificate", cert), ("private_key", key)):
        if not Path(path).is_file():
            raise ConfigError(f"{_where(config)}: [tls] {name}: cannot read {path}")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or "unusable"
        raise ConfigError(
            f"{_where(config)}: [tls] certificate: cannot load {cert} with {key}: {reason}"
        ) from None
    return context


def is_loopback(client: IPAddress | None) -> bool:
    return client is not None and client.is_loopback


def parse_peer(peer: object) -> IPAddress | None:
    if isinstance(peer, tuple) and peer and isinstance(peer[0], str):
        try:
            address = ipaddress.ip_address(peer[0].split("%", 1)[0])
        except ValueError:
            return None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            return address.ipv4_mapped
        return address
    return None
