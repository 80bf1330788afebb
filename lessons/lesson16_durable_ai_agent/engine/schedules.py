"""When a schedule ticks, and what becomes of the ticks missed while no worker ran.

A schedule's rule is a cron expression, read in a time zone, or a fixed
interval. The cron expression is parsed and stepped through by `cronsim`
(a small, well-tested library that follows Debian cron, daylight saving time
included: "30 2 * * *" in Europe/Paris fires at 03:00 on the night the clocks
skip 02:30), not by a parser of the course's own: a cron parser is a lesson in
calendars, not in durable execution.

Everything here is arithmetic on times the database gave (its clock): no
statement, no thread. The scheduler (`scheduler.py`) asks it which ticks are
due and how to fire them; `client.set_schedule` asks it for a schedule's first
tick.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from ..db.models import CatchUp, Schedule, TickOutcome

# The most ticks one firing handles for one schedule: a schedule of every
# second, back after a day's outage with catch_up "all", fires its 86,400
# ticks in batches, each a short transaction, not in one that holds its lock
# for minutes.
MAX_TICKS_PER_FIRING = 500


@dataclass(frozen=True)
class ScheduleRule:
    """A cron expression in a time zone, or an interval: when a schedule ticks."""

    cron: str | None
    every: timedelta | None
    time_zone: ZoneInfo

    @classmethod
    def parse(cls, *, cron: str | None, every: float | None, time_zone: str) -> ScheduleRule:
        """The rule, or a `ValueError` that says what is wrong with it."""
        if (cron is None) == (every is None):
            raise ValueError(
                "a schedule needs a cron expression or an interval (every): one of the two"
            )
        try:
            zone = ZoneInfo(time_zone)
        except (ZoneInfoNotFoundError, ValueError) as error:
            raise ValueError(f"unknown time zone {time_zone!r}") from error
        if every is not None:
            if every <= 0:
                raise ValueError(f"a schedule's interval must be positive, not {every} s")
            return cls(cron=None, every=timedelta(seconds=every), time_zone=zone)
        assert cron is not None
        try:
            CronSim(cron, datetime.now(zone))
        except CronSimError as error:
            raise ValueError(f"cron expression {cron!r} is not valid: {error}") from error
        return cls(cron=cron, every=None, time_zone=zone)

    @classmethod
    def of(cls, schedule: Schedule) -> ScheduleRule:
        return cls(cron=schedule.cron, every=schedule.every, time_zone=ZoneInfo(schedule.time_zone))

    def next_tick_after(self, moment: datetime) -> datetime:
        """The first tick strictly after `moment`. (An interval counts from `moment`.)"""
        if self.every is not None:
            return moment + self.every
        assert self.cron is not None
        return next(CronSim(self.cron, moment.astimezone(self.time_zone))).astimezone(UTC)

    def last_tick_at_or_before(self, moment: datetime, *, first: datetime) -> datetime | None:
        """The newest tick at or before `moment`, counting from `first`; None if none is."""
        if moment < first:
            return None
        if self.every is not None:
            return first + self.every * ((moment - first) // self.every)
        assert self.cron is not None
        # Backwards, cronsim starts from `moment` itself when it has a fraction
        # of a second (otherwise strictly before it): one microsecond more
        # makes "at or before" out of both.
        start = (moment + timedelta(microseconds=1)).astimezone(self.time_zone)
        last = next(CronSim(self.cron, start, reverse=True)).astimezone(UTC)
        return last if last >= first else None

    def ticks_from(self, first: datetime) -> Iterator[datetime]:
        """`first` (a tick), then every tick after it, for ever."""
        tick = first
        while True:
            yield tick
            tick = self.next_tick_after(tick)


@dataclass(frozen=True)
class Firing:
    """What one firing of a schedule does: each due tick with its outcome, and the next tick."""

    ticks: list[tuple[datetime, TickOutcome]]
    next_tick_at: datetime


def plan_firing(schedule: Schedule, now: datetime) -> Firing:
    """The ticks of `schedule` due at `now` (from its next_tick_at on), and what to do with each.

    A tick fired less than `grace` after its time is on time, and fired. One
    later was missed (no worker was up to fire it): `all` fires it late, `latest`
    fires only the newest of the missed ticks, `none` skips them all. At most
    MAX_TICKS_PER_FIRING ticks: the next firing goes on from where this one
    stopped (with `latest`, the ticks skipped before the newest are all
    skipped here, however many).
    """
    rule = ScheduleRule.of(schedule)
    # Late by `grace` or more: missed. The newest of them all, not only of
    # this batch, is the one `latest` fires.
    missed_until = now - schedule.grace
    newest_missed = rule.last_tick_at_or_before(missed_until, first=schedule.next_tick_at)
    ticks: list[tuple[datetime, TickOutcome]] = []
    for tick in rule.ticks_from(schedule.next_tick_at):
        if tick > now or len(ticks) == MAX_TICKS_PER_FIRING:
            return Firing(ticks=ticks, next_tick_at=tick)
        if tick > missed_until:
            outcome = TickOutcome.FIRED
        elif schedule.catch_up == CatchUp.ALL or (
            schedule.catch_up == CatchUp.LATEST and tick == newest_missed
        ):
            outcome = TickOutcome.FIRED_LATE
        else:
            outcome = TickOutcome.SKIPPED
        ticks.append((tick, outcome))
    raise AssertionError("ticks_from never ends")
