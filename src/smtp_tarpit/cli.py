"""The command line: ``serve``, ``check-config``, ``hash-password``; exit status 2 for any config error.

Invariants: the CLI adds no option of its own to the config; logs go to stderr; SIGTERM and SIGINT shut
down gracefully and exit 0; SIGHUP reloads the config and every file it names.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import getpass
import ipaddress
import json
import logging
import resource
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from smtp_tarpit import __version__
from smtp_tarpit.auth.passwords import hash_password
from smtp_tarpit.config import Config, ConfigError, load
from smtp_tarpit.observability import logs
from smtp_tarpit.server import admin
from smtp_tarpit.server import runtime as runtime_module
from smtp_tarpit.server.admin import AdminError
from smtp_tarpit.server.listener import ListenError, Server

log = logging.getLogger("smtp_tarpit")
EXIT_CONFIG = 2


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"smtp-tarpit: {exc}", file=sys.stderr)
        return EXIT_CONFIG


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smtp-tarpit", description=__doc__.splitlines()[0] if __doc__ else ""
    )
    parser.add_argument("--version", action="version", version=f"smtp-tarpit {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the SMTP server in the foreground")
    serve.add_argument("--config", type=Path, help="TOML file layered over the built-in defaults")
    serve.set_defaults(func=_serve)
    check = commands.add_parser("check-config", help="validate a config file and everything it names")
    check.add_argument("file", type=Path)
    check.set_defaults(func=_check)
    hasher = commands.add_parser("hash-password", help="read a password on stdin, print a salted scrypt hash")
    hasher.set_defaults(func=_hash)
    client = commands.add_parser("client", help="show or forget what the running server knows of a client")
    client.add_argument("action", choices=["show", "forget"])
    client.add_argument("address", help="the client's IP address")
    client.add_argument("--config", type=Path, help="the running server's config (for [admin] socket)")
    client.add_argument("--json", action="store_true", help="print the server's answer as JSON")
    client.set_defaults(func=_client)
    return parser


def _check(args: argparse.Namespace) -> int:
    config = load(args.file)
    built = runtime_module.build(config)
    directory = built.directory
    tarpit = "off" if config.tarpit.delay == 0 else f"{config.tarpit.delay:g}s"
    counts = f"{len(directory.domains)} domains, {len(directory.mailboxes)} addresses"
    print(f"{args.file}: ok ({counts}, tar pit {tarpit})")
    return 0


def _hash(args: argparse.Namespace) -> int:
    password = getpass.getpass("Password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("smtp-tarpit: hash-password: empty password", file=sys.stderr)
        return EXIT_CONFIG
    print(hash_password(password))
    return 0


def _client(args: argparse.Namespace) -> int:
    try:
        address = str(ipaddress.ip_address(args.address))
    except ValueError:
        print(f"smtp-tarpit: client {args.action}: not an IP address: {args.address}", file=sys.stderr)
        return EXIT_CONFIG
    path = load(args.config).admin.socket
    try:
        answer = admin.request(path, args.action, address)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        print(f"smtp-tarpit: cannot reach the server at {path}: {reason}", file=sys.stderr)
        return 1
    if not answer.get("ok"):
        print(f"smtp-tarpit: client {args.action}: {answer.get('error', 'refused')}", file=sys.stderr)
        return 1
    print(json.dumps(answer, indent=2) if args.json else _client_text(answer))
    return 0


def _client_text(answer: dict[str, object]) -> str:
    if "forgotten" in answer:
        forgotten = answer["forgotten"]
        what = ", ".join(forgotten) if isinstance(forgotten, list) and forgotten else "nothing was known"
        return f"forgot {answer['client']}: {what}"
    lines = [
        f"client {answer['client']}: score {answer['score']}, "
        f"{'FLAGGED as a harvester' if answer['flagged'] else 'not flagged'}, "
        f"{answer['connections']} open connections, next error waits {answer['next_error_delay']}s"
    ]
    records = answer["records"]
    assert isinstance(records, dict)
    for key, record in records.items():
        seen = ", ".join(f"{kind} {count}" for kind, count in record["seen"].items()) or "nothing"
        flag = f", flagged for {record['flagged_for']}s more" if record["flagged_for"] else ""
        lines.append(
            f"  {key}: score {record['score']}{flag}, "
            f"{record['recent_unknown_recipients']} recent unknown recipients; seen: {seen}"
        )
    return "\n".join(lines)


def _serve(args: argparse.Namespace) -> int:
    config = load(args.config)
    _setup_logging(config)
    built = runtime_module.build(config)
    _raise_fd_limit()
    try:
        with asyncio.Runner(loop_factory=_loop_factory(config)) as runner:
            runner.run(_run(built))
    except AdminError as exc:
        print(f"smtp-tarpit: [admin] socket: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except ListenError as exc:
        print(f"smtp-tarpit: [server] listen: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return 0


def _setup_logging(config: Config) -> None:
    logs.setup(config.log.level, config.log.format)


def _raise_fd_limit() -> None:
    """Each session is a descriptor: take all the kernel allows this process (its hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    before = soft
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("could not raise the file descriptor limit from %d to %d: %s", soft, hard, exc)
    if soft != before:
        log.info("file descriptor limit raised from %d to the hard limit %d", before, soft)
    else:
        log.info("file descriptor limit: %d (the hard limit is %d)", soft, hard)


def _loop_factory(config: Config) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (`pip install smtp-tarpit[fast]`) and not turned off; asyncio's own otherwise."""
    if not config.server.uvloop:
        log.info("event loop: asyncio ([server] uvloop = false)")
        return None
    try:
        import uvloop  # noqa: PLC0415  (an optional extra)
    except ImportError:
        log.info("event loop: asyncio (uvloop not installed)")
        return None
    log.info("event loop: uvloop %s", uvloop.__version__)
    return uvloop.new_event_loop  # type: ignore[no-any-return]


async def _run(built: runtime_module.Runtime) -> None:
    loop = asyncio.get_running_loop()
    server = Server(built, loop)
    stop = asyncio.Event()
    # Handlers first: a SIGTERM that arrives while the listeners open must still stop us gracefully.
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, server.reload)
    await server.start()
    configured = built.config.limits.max_connections
    log.info(
        "connection limit: %d%s",
        server.max_connections,
        "" if configured else " ([limits] max_connections = 0: the descriptor limit less a reserve)",
    )
    # Everything built so far lives as long as the process: keep it out of the collector's generations, so
    # full collections with thousands of held sessions stay short (they delay every timer while they run).
    gc.collect()
    gc.freeze()
    log.info("smtp-tarpit %s ready (tar pit delay %gs)", __version__, built.settings.delay)
    await stop.wait()
    await server.shutdown()
    log.info("stopped")
