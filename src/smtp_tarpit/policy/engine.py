"""The tar pit's decision for one reply: ``decide(view, facts, reply, now, settings) -> Decision``.

Order of rules (first match wins):
1. QUIT, authenticated sessions and exempt clients: pass, always.
2. A harvest-flagged client at RCPT: the same reply after the same delay for every address (450 4.7.1, or
   250 with "accept-then-defer"), and under "accept-then-defer" a 451 4.7.1 to DATA. Nothing about the
   address can change the answer or its timing.
3. An early talker's replies become 554 5.5.1 (and so errors, below).
4. An error (any 5xx): at the hard error limit, 421 and close; past the session's budget, 421 and close;
   else wait delay x growth^(n-1), where n counts this session's errors plus the client's remembered score,
   capped by max_delay and by the stage's cap (DATA 90 s, after the final dot 60 s, anything 240 s).
5. Everything else: pass.

Invariants: pure (``now`` passed in, no I/O); every delay returned is within ``0 < d <= cap``.
"""

from __future__ import annotations

from dataclasses import replace

from smtp_tarpit.policy.decisions import (
    PASS,
    Decision,
    Delay,
    Disconnect,
    Pass,
    Replace,
    SessionFacts,
    Stage,
)
from smtp_tarpit.policy.reputation import ClientView
from smtp_tarpit.policy.settings import MAX_ANY_DELAY, MAX_DATA_DELAY, MAX_MESSAGE_DELAY, PolicySettings
from smtp_tarpit.protocol import replies
from smtp_tarpit.protocol.replies import Reply

AUTH_FAILED_CODE = 535


def stage_cap(stage: Stage) -> float:
    if stage is Stage.DATA:
        return MAX_DATA_DELAY
    if stage is Stage.MESSAGE:
        return MAX_MESSAGE_DELAY
    return MAX_ANY_DELAY


def decide(view: ClientView, facts: SessionFacts, reply: Reply, now: float, s: PolicySettings) -> Decision:
    if facts.stage is Stage.QUIT or facts.authenticated or facts.exempt:
        return PASS
    if s.harvest and view.flagged(now):
        uniform = _uniform(facts, s)
        if uniform is not None:
            return uniform
    if facts.early_talker and reply.code < 500:
        timing = _error_timing(view, replace(facts, errors=facts.errors + 1), replies.EARLY_TALKER, now, s)
        return timing if isinstance(timing, Disconnect) else Replace(replies.EARLY_TALKER, timing)
    if reply.code >= 500:
        return _error_timing(view, facts, reply, now, s)
    return PASS


def _uniform(facts: SessionFacts, s: PolicySettings) -> Decision | None:
    wait = _delay(min(s.harvest_delay, stage_cap(facts.stage)), s)
    if facts.stage is Stage.RCPT:
        reply = replies.RECIPIENT_OK if s.harvest_action == "accept-then-defer" else replies.TRY_AGAIN_LATER
        return Replace(reply, wait)
    if facts.stage is Stage.DATA and s.harvest_action == "accept-then-defer":
        return Replace(replies.DEFER_MESSAGE, wait)
    return None


def error_delay(view: ClientView, facts: SessionFacts, reply: Reply, now: float, s: PolicySettings) -> float:
    """Seconds before an error reply: escalated, remembered, capped. 0 when the tar pit is off."""
    base = s.auth_failure_delay if reply.code == AUTH_FAILED_CODE else s.delay
    if base <= 0:
        return 0.0
    # This session's errors count through facts.errors; the remembered score adds what came before it.
    exponent = max(facts.errors - 1, 0) + view.score(now, s, facts.session_score) + facts.extra_score
    try:
        seconds = base * float(s.growth**exponent)
    except OverflowError:
        seconds = MAX_ANY_DELAY
    cap = min(max(s.max_delay, base), stage_cap(facts.stage), s.session_budget - facts.delayed)
    return max(min(seconds, cap), 0.0)


def _error_timing(
    view: ClientView, facts: SessionFacts, reply: Reply, now: float, s: PolicySettings
) -> Pass | Delay | Disconnect:
    if s.hard_error_limit and facts.errors >= s.hard_error_limit:
        return Disconnect(replies.TOO_MANY_ERRORS)
    seconds = error_delay(view, facts, reply, now, s)
    if seconds <= 0:
        if s.delay > 0 and facts.delayed >= s.session_budget:
            return Disconnect(replies.TOO_MANY_ERRORS)  # the session's budget is spent
        return PASS
    return _delay(seconds, s)


def _delay(seconds: float, s: PolicySettings) -> Delay:
    chunks = int(seconds / s.stutter_interval) if s.stutter and s.stutter_interval > 0 else 1
    return Delay(seconds, max(chunks, 1))
