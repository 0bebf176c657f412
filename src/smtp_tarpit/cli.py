"""The command line: ``serve``, ``check-config``, ``hash-password``; exit status 2 for any config error.

Invariants: the CLI adds no option of its own to the config; logs go to stderr; SIGTERM and SIGINT shut
down gracefully and exit 0; SIGHUP reloads the recipients file.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import resource
import signal
import sys
from pathlib import Path

from smtp_tarpit import __version__
from smtp_tarpit.auth.passwords import hash_password
from smtp_tarpit.config import Config, ConfigError, load
from smtp_tarpit.server import runtime as runtime_module
from smtp_tarpit.server.listener import Server

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


def _serve(args: argparse.Namespace) -> int:
    config = load(args.config)
    _setup_logging(config)
    built = runtime_module.build(config)
    _raise_fd_limit()
    asyncio.run(_run(built))
    return 0


def _setup_logging(config: Config) -> None:
    logging.basicConfig(
        level=config.log.level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    log.info("file descriptor limit: %d", soft)


async def _run(built: runtime_module.Runtime) -> None:
    loop = asyncio.get_running_loop()
    server = Server(built, loop)
    await server.start()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, server.reload)
    log.info("smtp-tarpit %s ready (tar pit delay %gs)", __version__, built.settings.delay)
    await stop.wait()
    await server.shutdown()
    log.info("stopped")
