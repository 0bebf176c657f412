"""The seed tar pit of Windows Server 2003 SP1 (KB 842851), exactly.

One setting, a delay in seconds (0 = off): every reply with a 5xx code waits that long before it is
written, for anonymous sessions only. Authenticated sessions and exempt networks are never delayed; 2xx,
3xx and 4xx replies are never delayed.
"""

from __future__ import annotations

from dataclasses import dataclass

from smtp_tarpit.policy.decisions import PASS, Decision, Delay, SessionFacts
from smtp_tarpit.protocol.replies import Reply


@dataclass(frozen=True, slots=True)
class SeedPolicy:
    delay: float  # seconds; 0 turns the tar pit off

    def decide(self, facts: SessionFacts, reply: Reply) -> Decision:
        if self.delay <= 0 or reply.code < 500 or facts.authenticated or facts.exempt:
            return PASS
        return Delay(self.delay)
