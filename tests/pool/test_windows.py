"""Availability windows at fixed instants, built from wall-clock times with zoneinfo."""

from __future__ import annotations

import math
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.errors import ConfigError
from tessera.pool.windows import Availability, Window, availability, parse_window

pytestmark = pytest.mark.timeout(60)

VIENNA = ZoneInfo("Europe/Vienna")
UTC = ZoneInfo("UTC")
HOUR = 3600.0
NIGHTS = "22:00-07:00 Europe/Vienna"
OFFICE = "09:00-17:00 UTC mon-fri"


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0, tz: ZoneInfo = VIENNA) -> float:
    """The unix time at which the clock in ``tz`` first shows this wall time."""
    return datetime(year, month, day, hour, minute, tzinfo=tz).timestamp()


def on(day: date, hour: int) -> float:
    return at(day.year, day.month, day.day, hour)


def test_a_night_crosses_midnight_in_its_zone() -> None:
    nights = availability([NIGHTS])  # Wednesday 2026-01-14, Vienna on UTC+1
    assert nights.open_until(at(2026, 1, 14, 23)) == at(2026, 1, 15, 7)
    assert nights.open_until(at(2026, 1, 15, 3)) == at(2026, 1, 15, 7)
    assert nights.open_until(at(2026, 1, 14, 22)) == at(2026, 1, 15, 7)  # opens at 22:00 sharp
    assert nights.open_until(at(2026, 1, 15, 7)) is None  # and closes at 07:00 sharp
    assert nights.open_until(at(2026, 1, 14, 12)) is None
    assert nights.next_open(at(2026, 1, 14, 12)) == at(2026, 1, 14, 22) == at(2026, 1, 14, 21, tz=UTC)
    assert nights.next_open(at(2026, 1, 15, 3)) == at(2026, 1, 15, 3)


@pytest.mark.parametrize(
    ("evening", "hours"),
    [(date(2026, 3, 28), 8.0), (date(2026, 10, 24), 10.0), (date(2026, 6, 10), 9.0)],
    ids=["clocks-forward", "clocks-back", "summer"],
)
def test_a_night_follows_the_dst_change(evening: date, hours: float) -> None:
    nights = availability([NIGHTS])
    morning = evening + timedelta(days=1)
    closes = nights.open_until(on(evening, 23))
    assert closes == on(morning, 7) and closes - on(evening, 22) == hours * HOUR
    assert nights.open_seconds(on(evening, 12), on(morning, 12)) == hours * HOUR


def test_a_boundary_in_a_skipped_hour_falls_at_the_skip_and_in_a_repeated_hour_on_its_first_pass() -> None:
    early = availability(["02:30-06:00 Europe/Vienna"])
    # 2026-03-29: 02:00 CET is followed by 03:00 CEST (01:00 UTC); no clock shows 02:30
    assert early.next_open(at(2026, 3, 29)) == at(2026, 3, 29, 1, tz=UTC)
    # 2026-10-25: 02:30 is shown twice, first at 00:30 UTC (CEST), then at 01:30 UTC (CET)
    assert early.next_open(at(2026, 10, 25)) == at(2026, 10, 25, 0, 30, tz=UTC)
    assert early.open_until(at(2026, 10, 25, 4)) == at(2026, 10, 25, 5, tz=UTC)


def test_weekdays_only_and_next_open_across_the_weekend() -> None:
    office = availability([OFFICE])  # Friday 2026-01-09 to Monday 2026-01-12
    assert office.open_until(at(2026, 1, 9, 10, tz=UTC)) == at(2026, 1, 9, 17, tz=UTC)
    assert office.open_until(at(2026, 1, 10, 10, tz=UTC)) is None  # Saturday
    assert office.next_open(at(2026, 1, 9, 18, tz=UTC)) == at(2026, 1, 12, 9, tz=UTC)
    assert office.next_open(at(2026, 1, 9, 18, tz=UTC), horizon_s=24 * HOUR) is None


def test_a_night_into_a_holiday_runs_to_its_end_but_none_starts_on_one() -> None:
    nights = availability([NIGHTS], holidays=["2026-12-25"])
    assert nights.open_until(at(2026, 12, 25, 3)) == at(2026, 12, 25, 7)  # started on the 24th
    assert nights.open_until(at(2026, 12, 25, 23)) is None
    assert nights.next_open(at(2026, 12, 25, 8)) == at(2026, 12, 26, 22)


def test_a_holiday_blocks_its_day() -> None:
    office = availability([OFFICE], holidays=["2026-12-25"])  # a Friday
    assert office.open_until(at(2026, 12, 25, 10, tz=UTC)) is None
    assert office.next_open(at(2026, 12, 24, 18, tz=UTC)) == at(2026, 12, 28, 9, tz=UTC)
    assert availability([OFFICE]).next_open(at(2026, 12, 24, 18, tz=UTC)) == at(2026, 12, 25, 9, tz=UTC)


def test_windows_that_touch_or_overlap_are_one() -> None:
    touching = availability(["22:00-24:00", "00:00-07:00"])
    assert touching.open_until(at(2026, 1, 14, 23, tz=UTC)) == at(2026, 1, 15, 7, tz=UTC)
    # 23:30 in Vienna is 22:30 UTC in winter: inside the UTC window, ending 01:00 Vienna
    zones = availability(["20:00-23:00 UTC", "23:30-01:00 Europe/Vienna"])
    assert zones.open_until(at(2026, 1, 14, 21, tz=UTC)) == at(2026, 1, 15, 1)
    weekend = availability(["00:00-24:00 sat,sun"])
    assert weekend.open_until(at(2026, 1, 10, 10, tz=UTC)) == at(2026, 1, 12, tz=UTC)
    assert weekend.next_open(at(2026, 1, 12, 10, tz=UTC)) == at(2026, 1, 17, tz=UTC)


def test_always_available() -> None:
    always = availability([])
    t = at(2026, 1, 14, 12)
    assert always == Availability() and always.always and always.describe() == "always"
    assert always.open_until(t) == math.inf and always.next_open(t) == t
    assert always.open_seconds(t, t + 5 * HOUR) == 5 * HOUR
    every_day = availability(["00:00-24:00 Europe/Vienna"])
    assert every_day.open_until(t) == math.inf  # open past the horizon
    assert availability(["00:00-24:00 Europe/Vienna"], ["2026-01-20"]).open_until(t) == at(2026, 1, 20)


def test_open_seconds_over_a_simulated_week() -> None:
    monday, next_monday = at(2026, 3, 23), at(2026, 3, 30)  # the week of the change to summer time
    nights = availability([NIGHTS])
    # 7 x 9 hours (Monday's first 7 and Sunday's last 2 make one night), less the skipped hour
    assert nights.open_seconds(monday, next_monday) == (7 * 9 - 1) * HOUR
    assert nights.open_seconds(at(2026, 1, 12), at(2026, 1, 19)) == 7 * 9 * HOUR
    office = availability([OFFICE])
    assert office.open_seconds(at(2026, 1, 12, tz=UTC), at(2026, 1, 19, tz=UTC)) == 40 * HOUR
    assert office.open_seconds(at(2026, 1, 12, 16, tz=UTC), at(2026, 1, 13, 10, tz=UTC)) == 2 * HOUR
    assert office.open_seconds(next_monday, monday) == 0.0


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("", "it is empty"),
        ("   ", "it is empty"),
        ("nights", "must begin with the hours as HH:MM-HH:MM"),
        ("22-07", "must begin with the hours as HH:MM-HH:MM"),
        ("22:00", "must begin with the hours as HH:MM-HH:MM"),
        ("25:00-07:00", "hours are 00:00 to 24:00"),
        ("22:00-24:30", "hours are 00:00 to 24:00"),
        ("22:60-07:00", "minutes are 00 to 59"),
        ("24:00-07:00", "cannot start at 24:00"),
        ("22:00-22:00", "opens and closes at 22:00 (for the whole day write 00:00-24:00)"),
        ("00:00-00:00", "opens and closes at 00:00"),
        ("22:00-07:00 Europe/Viena", 'unknown time zone "Europe/Viena"'),
        ("22:00-07:00 ../etc/passwd", 'unknown time zone "../etc/passwd"'),
        ("22:00-07:00 monday-friday", "(days are written mon, tue"),
        ("22:00-07:00 UTC mon-fry", 'unknown day "fry"'),
        ("22:00-07:00 UTC mon,,fri", 'unknown day ""'),
        ("22:00-07:00 mon-fri Europe/Vienna", "the time zone comes before the days"),
        ("22:00-07:00 UTC mon-fri weekly", 'unexpected "weekly"'),
    ],
)
def test_a_bad_spec_says_what_is_wrong_and_shows_the_right_form(spec: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_window(spec)
    message = str(caught.value)
    assert message.startswith(f'window "{spec}": ') and says in message
    assert message.endswith('write it like "22:00-07:00 Europe/Vienna mon-fri"')
    with pytest.raises(ConfigError):
        availability(["09:00-17:00", spec])


@pytest.mark.parametrize("holiday", ["2026-13-01", "2026-02-30", "25.12.2026", "20261225", "christmas"])
def test_a_bad_holiday_says_how_to_write_dates(holiday: str) -> None:
    with pytest.raises(ConfigError, match=f'holiday "{holiday}": write dates as YYYY-MM-DD'):
        availability([NIGHTS], [holiday])


def test_holidays_need_a_window_and_windows_check_their_fields() -> None:
    with pytest.raises(ConfigError, match="holidays need a window"):
        availability([], ["2026-12-25"])
    with pytest.raises(ConfigError, match='unknown time zone "Mars/Olympus"'):
        Window(0, 60, "Mars/Olympus")
    with pytest.raises(ConfigError, match="days are mon"):
        Window(0, 60, days=frozenset({7}))


@pytest.mark.parametrize(
    ("spec", "canonical"),
    [
        (NIGHTS, NIGHTS),
        ("09:00-17:00 UTC mon-fri", "09:00-17:00 UTC mon-fri"),
        ("00:00-24:00 sat,sun", "00:00-24:00 UTC sat,sun"),
        ("22:00-07:00 Europe/Vienna mon-thu,sun", "22:00-07:00 Europe/Vienna mon-thu,sun"),
        ("9:00 - 17:00 America/New_York Fri-Mon", "09:00-17:00 America/New_York mon,fri-sun"),
        ("22:00-00:00 tue , wed", "22:00-24:00 UTC tue,wed"),
        ("06:30-08:15 Asia/Kolkata mon-sun", "06:30-08:15 Asia/Kolkata"),
    ],
)
def test_specs_round_trip(spec: str, canonical: str) -> None:
    window = parse_window(spec)
    assert window.spec == canonical and parse_window(canonical) == window


def test_an_availability_round_trips_through_its_specs() -> None:
    given_ = availability([NIGHTS, "00:00-24:00 sat,sun"], ["2026-12-25", "2026-01-01"])
    assert given_.specs == (NIGHTS, "00:00-24:00 UTC sat,sun")
    assert given_.holiday_specs == ("2026-01-01", "2026-12-25")
    assert availability(given_.specs, given_.holiday_specs) == given_
    assert given_.describe() == f"{NIGHTS}; 00:00-24:00 UTC sat,sun; not on 2026-01-01, 2026-12-25"
    assert availability(NIGHTS, "2026-12-25") == availability([NIGHTS], ["2026-12-25"])


MIXED = availability([NIGHTS, OFFICE, "12:00-13:30 Asia/Tokyo sat"], ["2026-03-30", "2026-10-26"])


def open_by_the_clock(t: float) -> bool:
    """MIXED's answer read off each zone's wall clock (right where no boundary is in a DST hour)."""
    for window in MIXED.windows:
        local = datetime.fromtimestamp(t, ZoneInfo(window.zone))
        minute, today = local.hour * 60 + local.minute, local.date()
        yesterday = today - timedelta(days=1)

        def starts(day: date, w: Window = window) -> bool:
            return day.weekday() in w.days and day not in MIXED.holidays

        if window.end > window.start and starts(today) and window.start <= minute < window.end:
            return True
        if window.end <= window.start and (
            (starts(today) and minute >= window.start) or (starts(yesterday) and minute < window.end)
        ):
            return True
    return False


@settings(max_examples=150, deadline=None)
@given(st.integers(int(at(2026, 3, 20)), int(at(2026, 11, 5))))
def test_answers_agree_with_the_wall_clock(t: int) -> None:
    """At any second of a year's DST changes: open or not as the clocks say, closing when they
    say, and nothing open before next_open (checked every 15 minutes)."""
    until, start = MIXED.open_until(t), MIXED.next_open(t)
    assert (until is not None) == open_by_the_clock(t) == (start == t)
    if until is not None:
        assert open_by_the_clock(until - 1) and not open_by_the_clock(until)
    else:
        assert start is not None and open_by_the_clock(start) and not open_by_the_clock(start - 1)
        assert not any(open_by_the_clock(s) for s in range(t, int(start), 900))
