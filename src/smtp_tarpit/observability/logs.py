"""Log output: text (one ``key=value`` line per event) or JSON (one object per line), always to stderr.

Invariants: every session end, message and harvest flag is one line whose ``key=value`` pairs appear as
fields in JSON mode too (fail2ban and log shippers read either); client-supplied text in them has already
been made printable by the caller (``server.trace.printable``).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from functools import lru_cache

_PAIR = re.compile(r'(\w+)=("[^"]*"|\S+)')


class TextFormatter(logging.Formatter):
    """``2026-11-28 14:07:41,225 INFO smtp_tarpit.session: message ...``: logging's default text layout,
    with the time of day formatted once a second rather than once a line (two lines per message)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return f"{_second(int(record.created), None)},{int(record.msecs):03d}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry: dict[str, object] = {
            "time": f"{_second(int(record.created), 'T')}.{int(record.msecs):03d}",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
        }
        for key, value in _PAIR.findall(message):
            entry.setdefault(key, value[1:-1] if value.startswith('"') else value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


@lru_cache(maxsize=4)
def _second(second: int, separator: str | None) -> str:
    return time.strftime(f"%Y-%m-%d{separator or ' '}%H:%M:%S", time.localtime(second))


def setup(level: str, fmt: str) -> None:
    # Our lines name no source line, thread or process: skip working them out for every record (the
    # logging HOWTO's "Optimization" section; together a tenth of the event loop's time per message).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
