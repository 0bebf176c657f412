"""How much the server may take on at once, worked out from the process's limits and the config.

Pure functions of their arguments and of RLIMIT_NOFILE: the listen backlog, the connection limit when
``[limits] max_connections`` is 0, and how many messages ``[limits] message_memory`` lets arrive at once.

Invariant: the defaults leave descriptors in reserve, so the process never runs out of them at its own
connection limit (asyncio handles running out badly).
"""

from __future__ import annotations

import resource

from smtp_tarpit.server.message import HIGH_WATER

READ_CHUNK = 256 * 1024  # octets: the most asyncio's transports (and uvloop's) read from a socket at once


def descriptor_limit() -> int:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1_000_000 if soft == resource.RLIM_INFINITY else soft


def listen_backlog(descriptors: int) -> int:
    """The listen queue: connections the kernel holds for us at a peak (the kernel caps it at somaxconn).
    asyncio also accepts up to this many in one go, so it must fit under the descriptor limit."""
    return min(4096, max(128, descriptors // 8))


def connection_limit(configured: int) -> int:
    """``[limits] max_connections``, or for 0 the descriptor limit less a reserve: one accept burst
    (the listen backlog: asyncio accepts that many before a session can refuse with 421) plus a tenth,
    at most 1000, for message files, DNS sockets, downstream connections and the listeners themselves.
    Descriptors then never run out, which asyncio handles badly (a log line and a retry timer for each
    connection left in the backlog, every second)."""
    if configured:
        return configured
    descriptors = descriptor_limit()
    reserve = listen_backlog(descriptors) + min(1000, max(32, descriptors // 10))
    return max(descriptors - reserve, 1)


def message_slots(message_memory: int, data_part: int) -> int:
    """Messages that may be received at once within ``message_memory`` octets. Each is counted at the most
    one session can hold of it: a socket read, the text not yet cut into a part (``data_part``) and the
    backlog to its destination (``HIGH_WATER``); a longer message goes on to disk or downstream part by
    part, so that bound holds whatever its size."""
    return max(1, message_memory // (READ_CHUNK + data_part + HIGH_WATER))
