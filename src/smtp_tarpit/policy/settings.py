"""The policy's settings as plain values (built from config by the server; the policy never reads TOML).

Invariants: every number here is already within its validated bounds; seconds are floats.
"""

from __future__ import annotations

from dataclasses import dataclass

# RFC 5321 4.5.3.2: clients wait 5 minutes for most replies, 2 minutes for the DATA reply, 10 minutes after
# the final dot. Our caps stay well inside them so a legitimate client never times out on us.
MAX_ANY_DELAY = 240.0
MAX_DATA_DELAY = 90.0
MAX_MESSAGE_DELAY = 60.0


@dataclass(frozen=True, slots=True)
class Weights:
    """How much each observation moves a client's score (in units of 'one error')."""

    error: float = 1.0
    unknown_recipient: float = 1.0
    protocol: float = 1.0
    auth_failure: float = 2.0
    early_talk: float = 5.0
    delivered: float = -2.0


@dataclass(frozen=True, slots=True)
class PolicySettings:
    delay: float = 0.0  # the seed delay before a 5xx; 0 = tar pit off
    auth_failure_delay: float = 0.0  # replaces delay for 535
    growth: float = 1.0  # each further error waits growth times longer
    max_delay: float = 60.0
    session_budget: float = 1200.0  # total seconds one session may be held; then 421
    hard_error_limit: int = 20  # 0 = no limit
    watch: bool = False  # compute and log decisions, apply none
    stutter: bool = False
    stutter_interval: float = 1.0
    # harvest defence (off while threshold == 0)
    harvest_threshold: int = 0
    harvest_window: float = 3600.0
    harvest_hold_for: float = 3600.0
    harvest_action: str = "tempfail"  # or "accept-then-defer"
    harvest_delay: float = 30.0
    # reputation across connections (off while half_life == 0)
    half_life: float = 0.0
    prefix_weight: float = 0.5
    max_score: float = 100.0
    weights: Weights = Weights()

    @property
    def reputation(self) -> bool:
        return self.half_life > 0

    @property
    def harvest(self) -> bool:
        return self.harvest_threshold > 0
