"""The Maildir's disk as the server watches it: what a crash left in ``tmp/`` removed at start, and the
free space checked against ``[limits] min_free_space`` (MAIL gets 452 4.3.1 while it is low).

Invariants: every file-system call runs in a thread, never on the event loop; one log line when the space
runs low and one when it comes back, not one per check.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from smtp_tarpit.delivery.maildir import MaildirDeliverer
from smtp_tarpit.observability.metrics import Stats

log = logging.getLogger("smtp_tarpit.server")
CHECK_EVERY = 5.0  # seconds between free-space checks of the Maildir's file system


def free_space(root: Path) -> int:
    """Octets an unprivileged writer may still use where ``root`` is (or would be made)."""
    path = root
    while not path.exists() and path != path.parent:
        path = path.parent
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


async def clean_tmp(deliverer: MaildirDeliverer) -> None:
    try:
        removed = await asyncio.to_thread(deliverer.clean_tmp)
    except OSError as exc:
        log.warning("could not clean the Maildirs' tmp folders: %s", exc)
        return
    if removed:
        log.info("removed %d unfinished files from the Maildirs' tmp folders (left by a crash)", removed)


class DiskWatch:
    """``low`` while the Maildir's file system has less than the minimum free (as last measured)."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.low = False

    async def measure(self, root: Path, minimum: int) -> None:
        try:
            free = await asyncio.to_thread(free_space, root)
        except OSError as exc:
            log.warning("cannot tell the free space of %s: %s", root, exc)
            return
        low = free < minimum
        if low == self.low:
            return
        self.low = low
        if low:
            self.stats.cap("min_free_space")
            log.error(
                "%s has %d MiB free, below [limits] min_free_space: MAIL gets 452 4.3.1 for now",
                root,
                free // 2**20,
            )
        else:
            log.warning("%s has %d MiB free again: accepting mail", root, free // 2**20)
