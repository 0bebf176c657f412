"""Counters the server keeps, and their Prometheus exposition.

The hot path only bumps plain ints in ``Stats`` (a dict increment per reply, nothing per byte); a custom
collector turns them into metric families when /metrics is scraped. So metrics cost nothing when nobody
scrapes, and nothing is registered globally: each server has its own registry.

Invariants: no per-IP (or per-client) label anywhere: label values come from small fixed sets (reply class,
command, decision kind, cap name, result), so the number of series is bounded whatever the clients do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

# How long tar pitted clients waited before they hung up: the published bot data says 21% leave by 15 s,
# 87% by 30 s; legitimate MTAs wait minutes.
HANGUP_BUCKETS = (1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 240.0)
DELIVERY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass
class Histogram:
    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.total += value
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
                return
        self.counts[-1] += 1

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        cumulative, running = [], 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            cumulative.append((bound, float(running)))
        return HistogramMetricFamily(name, documentation, buckets=cumulative, sum_value=self.total)


@dataclass
class Stats:
    sessions: int = 0
    replies: dict[tuple[str, ...], int] = field(default_factory=dict)  # (class, command) -> count
    messages: dict[str, int] = field(default_factory=dict)  # accepted / deferred
    caps_hit: dict[str, int] = field(default_factory=dict)
    day: str = ""
    delayed_today: float = 0.0
    hangups: Histogram = field(default_factory=lambda: Histogram(HANGUP_BUCKETS))
    delivery: Histogram = field(default_factory=lambda: Histogram(DELIVERY_BUCKETS))

    def reply(self, code: int, command: str) -> None:
        key = (f"{code // 100}xx", command)
        self.replies[key] = self.replies.get(key, 0) + 1

    def message(self, result: str, seconds: float) -> None:
        self.messages[result] = self.messages.get(result, 0) + 1
        self.delivery.observe(seconds)

    def cap(self, name: str) -> None:
        self.caps_hit[name] = self.caps_hit.get(name, 0) + 1

    def delayed(self, seconds: float, today: str) -> None:
        """Count seconds of delay served; ``today`` (a local date) restarts the daily figure."""
        if today != self.day:
            self.day, self.delayed_today = today, 0.0
        self.delayed_today += seconds


@dataclass(frozen=True)
class Live:
    """Readings taken at scrape time from the running server."""

    active: Callable[[], int]
    tarpitted: Callable[[], int]
    delayed_seconds: Callable[[], float]
    decisions: Callable[[], dict[str, int]]
    harvest_flags: Callable[[], int]
    clients_known: Callable[[], int]
    lookups: Callable[[], dict[tuple[str, ...], int]]  # (subsystem, outcome) -> count: DNS, verification
    store_errors: Callable[[], int]
    store_up: Callable[[], bool]
    overloaded: Callable[[], bool]


class ServerCollector(Collector):
    def __init__(self, stats: Stats, live: Live) -> None:
        self.stats, self.live = stats, live

    def collect(self) -> Iterator[Metric]:
        s, live = self.stats, self.live
        yield _counter("sessions", "SMTP sessions accepted", s.sessions)
        yield _gauge("sessions_active", "SMTP sessions open now", live.active())
        yield _gauge("sessions_tarpitted", "Sessions waiting on a delayed reply now", live.tarpitted())
        yield _labelled("replies", "Replies sent, by code class and command", ["class", "command"], s.replies)
        decisions: dict[tuple[str, ...], int] = {(kind,): n for kind, n in live.decisions().items()}
        yield _labelled("decisions", "Tar pit decisions, by kind", ["kind"], decisions)
        wasted = live.delayed_seconds()
        yield _counter("delayed_seconds", "Seconds of delay imposed on clients: attacker time wasted", wasted)
        yield s.hangups.family(
            f"{PREFIX}hangup_wait_seconds", "How long tar pitted clients waited, hanging up"
        )
        yield _counter("harvest_flags", "Client keys flagged as directory harvesters", live.harvest_flags())
        messages: dict[tuple[str, ...], int] = {(result,): n for result, n in s.messages.items()}
        yield _labelled("messages", "Messages, by result (accepted, deferred)", ["result"], messages)
        yield s.delivery.family(f"{PREFIX}delivery_seconds", "Time to store a message durably")
        yield _counter("store_errors", "Shared client store operations that failed", live.store_errors())
        up = float(live.store_up())
        yield _gauge("store_up", "1 while the shared client store answers (or none is used)", up)
        yield _gauge("overload", "1 while overload (stress) mode is on", float(live.overloaded()))
        caps: dict[tuple[str, ...], int] = {(cap,): n for cap, n in s.caps_hit.items()}
        yield _labelled("caps_hit", "Times a cap bit, by cap", ["cap"], caps)
        yield _gauge("clients_known", "Client records held", live.clients_known())
        yield _labelled(
            "lookups",
            "DNS checks and downstream recipient checks, by kind and outcome",
            ["kind", "outcome"],
            live.lookups(),
        )


PREFIX = "smtp_tarpit_"


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, documentation, value=value)


def _labelled(
    name: str, documentation: str, labels: list[str], values: Mapping[tuple[str, ...], int]
) -> CounterMetricFamily:
    family = CounterMetricFamily(PREFIX + name, documentation, labels=labels)
    for label_values, value in sorted(values.items()):
        family.add_metric(list(label_values), value)
    return family


def registry(stats: Stats, live: Live) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(ServerCollector(stats, live))
    return reg
