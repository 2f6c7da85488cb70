"""Availability windows: when a provider's machine may work ("nights only"), in unix times.

A window spec is ``"HH:MM-HH:MM [TZ] [DAYS]"``, e.g. ``"22:00-07:00 Europe/Vienna mon-thu,sun"``:

- the hours are wall-clock times in TZ, an IANA zone name (default ``UTC``); ``24:00`` (or
  ``00:00``) may end a window; an end before the start crosses midnight, and such a window
  belongs to the day it starts on (``"22:00-07:00 fri"`` is Friday night into Saturday);
- DAYS are days or ranges of ``mon`` .. ``sun``, comma-separated (``mon-thu,sun``; a range
  may wrap, ``fri-mon``); default every day.

Holidays are dates on which no window opens, read in each window's zone: a window that would
start on a holiday does not open; one that started the day before runs to its end.

A boundary falls at the first instant at which the local clock shows its time or later, so
daylight saving time is followed: the night 22:00-07:00 Europe/Vienna lasts 8 hours into
2026-03-29 and 10 hours into 2026-10-25; a boundary inside the hour the clocks skip falls at
the skip, one inside the hour they repeat on its first pass.

Queries look only at the days around the time asked about: each window's occurrences are
computed per local day in its zone and merged where they overlap or touch; nothing is scanned
minute by minute.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tessera.errors import ConfigError

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
EVERY_DAY = frozenset(range(7))
HORIZON_S = 14 * 86_400.0  # how far next_open looks, and open_until before it answers math.inf
EXAMPLE = "22:00-07:00 Europe/Vienna mon-fri"

Span = tuple[float, float]  # [opens, closes) in unix seconds

_DAY_S = 86_400.0
_ONE_DAY = timedelta(days=1)
_HOURS = re.compile(r"([0-9]{1,2}):([0-9]{2})-([0-9]{1,2}):([0-9]{2})")
_DAY_LIKE = re.compile(r"[a-z,-]+")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


class _SpecError(Exception):
    """What is wrong with a spec; parse_window adds the spec and an example."""


@dataclass(frozen=True)
class Window:
    """One window: it opens ``start`` and closes ``end`` minutes after local midnight in
    ``zone`` on each of ``days`` (0 is Monday); an end not after the start is on the next day.

    Invariant: start in [0, 1440), end in (0, 1440], start != end, days a non-empty subset of
    0..6, zone a known IANA zone; so ``parse_window(w.spec) == w``.
    """

    start: int
    end: int
    zone: str = "UTC"
    days: frozenset[int] = EVERY_DAY

    def __post_init__(self) -> None:
        if problem := _problem(self.start, self.end, self.zone, self.days):
            raise ConfigError(f"{self!r}: {problem}")  # parse_window quotes the spec instead

    @property
    def spec(self) -> str:
        """The canonical spec, zone always written, days only when not every day."""
        text = f"{_clock(self.start)}-{_clock(self.end)} {self.zone}"
        return text if self.days == EVERY_DAY else f"{text} {_day_list(self.days)}"

    def span(self, day: date) -> Span:
        """When the window opens and closes if it starts on local ``day`` (whether or not it
        does); empty when the clocks skip all of it."""
        tz = ZoneInfo(self.zone)
        closing_day = day + _ONE_DAY if self.end <= self.start else day
        return _instant(day, self.start, tz), _instant(closing_day, self.end, tz)

    def spans(self, lo: float, hi: float, holidays: frozenset[date] = frozenset()) -> Iterator[Span]:
        """The window's occurrences that overlap [lo, hi), in order, not clipped to it."""
        tz = ZoneInfo(self.zone)
        day = datetime.fromtimestamp(lo, tz).date() - _ONE_DAY  # the latest start that can reach lo
        last = datetime.fromtimestamp(hi, tz).date()
        while day <= last:
            if day.weekday() in self.days and day not in holidays:
                opens, closes = self.span(day)
                if opens < closes and opens < hi and closes > lo:
                    yield opens, closes
            day += _ONE_DAY


@dataclass(frozen=True)
class Availability:
    """When a machine may work: the union of its windows, less those that would start on a
    holiday. No windows: always available (and no holidays, as they would close nothing).

    Times are unix seconds; an open span is [opens, closes), and spans that overlap or touch
    are one span, whichever windows they come from.
    """

    windows: tuple[Window, ...] = ()
    holidays: frozenset[date] = frozenset()

    def __post_init__(self) -> None:
        if self.holidays and not self.windows:
            raise ConfigError(
                "holidays need a window to close: without windows the machine is always available; "
                'add one such as "00:00-24:00 Europe/Vienna"'
            )

    @property
    def always(self) -> bool:
        return not self.windows

    @property
    def specs(self) -> tuple[str, ...]:
        """The windows as canonical specs: ``availability(a.specs, a.holiday_specs) == a``."""
        return tuple(w.spec for w in self.windows)

    @property
    def holiday_specs(self) -> tuple[str, ...]:
        return tuple(day.isoformat() for day in sorted(self.holidays))

    def describe(self) -> str:
        """One line for people: the specs, then the holidays."""
        if self.always:
            return "always"
        text = "; ".join(self.specs)
        return f"{text}; not on {', '.join(self.holiday_specs)}" if self.holidays else text

    def spans(self, lo: float, hi: float) -> list[Span]:
        """The open spans that overlap [lo, hi), merged and in order, not clipped to it."""
        if self.always:
            return [(-math.inf, math.inf)] if lo < hi else []
        return _merge([s for w in self.windows for s in w.spans(lo, hi, self.holidays)])

    def open_until(self, t: float, horizon_s: float = HORIZON_S) -> float | None:
        """When availability ends if it is open at ``t``; None if closed at ``t``; ``math.inf``
        if it stays open past ``t + horizon_s`` (always available, or windows that join up)."""
        if self.always:
            return math.inf
        reach = min(2 * _DAY_S, horizon_s)
        while True:
            spans = self.spans(t, t + reach)
            if not spans or spans[0][0] > t:
                return None
            if spans[0][1] < t + reach:  # ends inside what was looked at: nothing can extend it
                return spans[0][1]
            if reach >= horizon_s:
                return math.inf
            reach = min(4 * reach, horizon_s)

    def next_open(self, t: float, horizon_s: float = HORIZON_S) -> float | None:
        """The first time from ``t`` on at which it is open (``t`` itself if open); None if
        nothing opens before ``t + horizon_s``."""
        if self.always:
            return t
        for reach in sorted({min(2 * _DAY_S, horizon_s), horizon_s}):
            if spans := self.spans(t, t + reach):
                return max(spans[0][0], t)
        return None

    def open_seconds(self, start: float, end: float) -> float:
        """How many seconds of [start, end) are open."""
        if end <= start:
            return 0.0
        if self.always:
            return end - start
        return math.fsum(min(e, end) - max(s, start) for s, e in self.spans(start, end))


def parse_window(spec: str) -> Window:
    """One window from its spec (see the module's docstring); ConfigError says what is wrong."""
    try:
        return _parse(spec)
    except _SpecError as bad:
        raise ConfigError(_message(spec, str(bad))) from None


def availability(specs: Sequence[str], holidays: Sequence[str] = ()) -> Availability:
    """Availability from window specs and ISO holiday dates (one string counts as one item)."""
    specs = (specs,) if isinstance(specs, str) else specs
    holidays = (holidays,) if isinstance(holidays, str) else holidays
    return Availability(tuple(parse_window(s) for s in specs), frozenset(_holiday(h) for h in holidays))


def _parse(spec: str) -> Window:
    parts = re.sub(r"\s*([,-])\s*", r"\1", spec.strip()).split()
    if not parts:
        raise _SpecError("it is empty")
    hours = _HOURS.fullmatch(parts[0])
    if hours is None:
        raise _SpecError("it must begin with the hours as HH:MM-HH:MM")
    start, end = _minutes(hours[1], hours[2]), _minutes(hours[3], hours[4])
    if start == end:
        raise _SpecError(_same_hours(start))
    end = end or 1440  # closing at 00:00 is closing at midnight
    zone, days = _zone_and_days(parts[1:])
    if problem := _problem(start, end, zone, days):
        raise _SpecError(problem)
    return Window(start, end, zone, days)


def _minutes(hours: str, minutes: str) -> int:
    if int(minutes) > 59:
        raise _SpecError("minutes are 00 to 59")
    value = int(hours) * 60 + int(minutes)
    if value > 1440:
        raise _SpecError("hours are 00:00 to 24:00")
    return value


def _zone_and_days(rest: list[str]) -> tuple[str, frozenset[int]]:
    if len(rest) > 2:
        raise _SpecError(
            f'unexpected "{" ".join(rest[2:])}": the hours may be followed by a time zone and days, no more'
        )
    if len(rest) == 2:
        if _is_days(rest[0]) and not _is_days(rest[1]):
            raise _SpecError("the time zone comes before the days")
        return rest[0], _days(rest[1])
    if rest and _is_days(rest[0]):
        return "UTC", _days(rest[0])
    return (rest[0] if rest else "UTC"), EVERY_DAY


def _is_days(token: str) -> bool:
    token = token.lower()
    return bool(_DAY_LIKE.fullmatch(token)) and any(p in DAY_NAMES for p in re.split("[,-]", token))


def _days(token: str) -> frozenset[int]:
    days: set[int] = set()
    for piece in token.lower().split(","):
        first, _, last = piece.partition("-")
        a, b = _day(first), _day(last or first)
        days.update((a + i) % 7 for i in range((b - a) % 7 + 1))
    return frozenset(days)


def _day(name: str) -> int:
    if name not in DAY_NAMES:
        raise _SpecError(
            f'unknown day "{name}": days are {", ".join(DAY_NAMES)}, listed or as ranges like "mon-thu,sun"'
        )
    return DAY_NAMES.index(name)


def _problem(start: int, end: int, zone: str, days: frozenset[int]) -> str | None:
    """What makes these fields no window, or None."""
    if start == 1440:
        return "a window cannot start at 24:00 (start it at 00:00)"
    if not (0 <= start < 1440 and 0 < end <= 1440):
        return "hours are 00:00 to 24:00"
    if start == end:
        return _same_hours(start)
    if not days or not days <= EVERY_DAY:
        return f"days are {', '.join(DAY_NAMES)}"
    if _zone(zone) is None:
        hint = f" (days are written {', '.join(DAY_NAMES)})" if _DAY_LIKE.fullmatch(zone.lower()) else ""
        return f'unknown time zone "{zone}": use an IANA name such as "Europe/Vienna" or "UTC"{hint}'
    return None


def _same_hours(start: int) -> str:
    return f"it opens and closes at {_clock(start)} (for the whole day write 00:00-24:00)"


def _zone(key: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(key)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def _holiday(text: str) -> date:
    day = text.strip()
    if _DATE.fullmatch(day):
        with contextlib.suppress(ValueError):
            return date.fromisoformat(day)
    raise ConfigError(f'holiday "{text}": write dates as YYYY-MM-DD, like "2026-12-25"')


def _message(spec: str, problem: str) -> str:
    return f'window "{spec}": {problem}; write it like "{EXAMPLE}"'


def _clock(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def _day_list(days: frozenset[int]) -> str:
    """Days as the shortest spec: runs of three or more as ranges (``mon-thu,sun``)."""
    runs: list[list[int]] = []
    for day in sorted(days):
        if runs and day == runs[-1][-1] + 1:
            runs[-1].append(day)
        else:
            runs.append([day])
    names = [[DAY_NAMES[d] for d in run] for run in runs]
    return ",".join(f"{run[0]}-{run[-1]}" if len(run) > 2 else ",".join(run) for run in names)


def _merge(pieces: list[Span]) -> list[Span]:
    """Spans in order, those that overlap or touch joined into one."""
    merged: list[Span] = []
    for opens, closes in sorted(pieces):
        if merged and opens <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], closes))
        else:
            merged.append((opens, closes))
    return merged


def _instant(day: date, minute: int, tz: ZoneInfo) -> float:
    """The first instant at which the clock in ``tz`` shows ``minute`` after midnight of local
    ``day``, or a later time (the skip, when the clocks jump over it)."""
    wall = datetime.combine(day, time()) + timedelta(minutes=minute)
    first = wall.replace(tzinfo=tz).timestamp()  # fold 0: the first pass of a repeated hour
    other = wall.replace(tzinfo=tz, fold=1).timestamp()
    return first if other >= first else _skip(other, first, tz)


def _skip(before: float, after: float, tz: ZoneInfo) -> float:
    """The instant in (before, after] at which the clocks in ``tz`` jump forward, to the second
    (by bisection: only a boundary inside a skipped hour needs it)."""
    offset = datetime.fromtimestamp(before, tz).utcoffset()
    lo, hi = math.floor(before), math.ceil(after)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, tz).utcoffset() == offset:
            lo = mid
        else:
            hi = mid
    return float(hi)
