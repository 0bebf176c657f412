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

_PAIR = re.compile(r'(\w+)=("[^"]*"|\S+)')


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
        }
        for key, value in _PAIR.findall(message):
            entry.setdefault(key, value[1:-1] if value.startswith('"') else value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
