from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from clusterai.autoscale.cron import Cron, CronError

pytestmark = pytest.mark.timeout(10)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def test_fields_lists_ranges_steps_and_names() -> None:
    cron = Cron.parse("*/15 8-18/2 * jan,jun mon-fri")
    assert cron.minutes == frozenset({0, 15, 30, 45})
    assert cron.hours == frozenset({8, 10, 12, 14, 16, 18})
    assert cron.months == frozenset({1, 6})
    assert cron.weekdays == frozenset({1, 2, 3, 4, 5})
    assert Cron.parse("5/20 * * * *").minutes == frozenset({5, 25, 45})
    assert Cron.parse("0 0 * * 7").weekdays == frozenset({0})  # 7 is Sunday too


def test_matches() -> None:
    weekday_mornings = Cron.parse("0 8 * * 1-5")
    assert weekday_mornings.matches(at("2024-01-01T08:00"))  # a Monday
    assert not weekday_mornings.matches(at("2024-01-01T08:01"))
    assert not weekday_mornings.matches(at("2024-01-06T08:00"))  # Saturday
    assert Cron.parse("30 12 15 * *").matches(at("2024-03-15T12:30"))


def test_day_of_month_or_day_of_week_when_both_are_restricted() -> None:
    cron = Cron.parse("0 0 1 * mon")  # the 1st, and every Monday, as in Vixie cron
    assert cron.matches(at("2024-02-01T00:00"))  # a Thursday, the 1st
    assert cron.matches(at("2024-02-05T00:00"))  # a Monday
    assert not cron.matches(at("2024-02-06T00:00"))


def test_last_match_within_a_window() -> None:
    cron = Cron.parse("0 8 * * 1-5")
    ten_hours = timedelta(hours=10)
    assert cron.last_match(at("2024-01-01T12:34:56"), ten_hours) == at("2024-01-01T08:00")
    assert cron.last_match(at("2024-01-01T08:00:00"), ten_hours) == at("2024-01-01T08:00")
    assert cron.last_match(at("2024-01-01T07:59:59"), ten_hours) is None
    assert cron.last_match(at("2024-01-01T18:00:00"), ten_hours) is None  # the window is [08:00, 18:00)
    # Saturday noon looks back a whole week: Friday 08:00 is the latest start
    assert cron.last_match(at("2024-01-06T12:00"), timedelta(days=7)) == at("2024-01-05T08:00")


@pytest.mark.parametrize(("text", "message"), [
    ("0 8 * *", "has 4 fields; it needs 5"),
    ("61 * * * *", "minute 61 is outside 0-59"),
    ("* 25 * * *", "hour 25 is outside 0-23"),
    ("* * 0 * *", "day of month 0 is outside 1-31"),
    ("* * * 13 *", "month 13 is outside 1-12"),
    ("* * * * 8", "day of week 8 is outside 0-7"),
    ("*/0 * * * *", "minute step must be at least 1"),
    ("* 18-8 * * *", "hour range '18-8' runs backwards"),
    ("* * * * funday", "day of week has 'funday', not a number"),
])
def test_bad_expressions_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(CronError) as info:
        Cron.parse(text)
    assert message in str(info.value)
    assert repr(text) in str(info.value)
