"""A five-field cron matcher (minute hour day-of-month month day-of-week), written here rather than
adding a dependency for one feature.

Fields take `*`, numbers, lists (`1,15`), ranges (`1-5`), steps (`*/15`, `8-18/2`), and three-letter
names for months and weekdays (`mon-fri`). Day of week is 0-7, both 0 and 7 being Sunday. As in
Vixie cron, when both day of month and day of week are restricted, a day matching either matches.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")

# (name, low, high, names mapped to numbers)
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, {name: i + 1 for i, name in enumerate(_MONTHS)}),
    ("day of week", 0, 7, {name: i for i, name in enumerate(_DAYS)}),
)


class CronError(ValueError):
    """The expression is not valid five-field cron; config.py turns it into a config error."""


@dataclass(frozen=True, slots=True)
class Cron:
    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday (7 folded into 0)
    days_restricted: bool
    weekdays_restricted: bool

    @classmethod
    def parse(cls, text: str) -> Cron:
        parts = text.split()
        if len(parts) != 5:
            raise CronError(f"cron {text!r} has {len(parts)} fields; it needs 5 "
                            "(minute hour day-of-month month day-of-week)")
        sets = [_parse_field(part, *spec, text) for part, spec in zip(parts, _FIELDS)]
        weekdays = frozenset(d % 7 for d in sets[4])
        return cls(text, sets[0], sets[1], sets[2], sets[3], weekdays,
                   days_restricted=parts[2] != "*", weekdays_restricted=parts[4] != "*")

    def day_matches(self, t: datetime) -> bool:
        if t.month not in self.months:
            return False
        by_day = t.day in self.days
        by_weekday = (t.isoweekday() % 7) in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return by_day or by_weekday
        return by_day and by_weekday

    def matches(self, t: datetime) -> bool:
        return self.day_matches(t) and t.hour in self.hours and t.minute in self.minutes

    def last_match(self, t: datetime, within: timedelta) -> datetime | None:
        """The latest matching minute in (t - within, t], or None; skips whole days and hours that
        cannot match, so a window of a week costs hundreds of steps, not ten thousand."""
        earliest = t - within
        at = t.replace(second=0, microsecond=0)
        while at > earliest:
            if not self.day_matches(at):
                at = at.replace(hour=0, minute=0) - timedelta(minutes=1)
            elif at.hour not in self.hours:
                at = at.replace(minute=0) - timedelta(minutes=1)
            elif at.minute not in self.minutes:
                at -= timedelta(minutes=1)
            else:
                return at
        return None


def _parse_field(part: str, name: str, low: int, high: int, names: dict[str, int], text: str) -> frozenset[int]:
    values: set[int] = set()
    for item in part.split(","):
        span, _, step_text = item.partition("/")
        step = _number(step_text, name, text, {}) if step_text else 1
        if step < 1:
            raise CronError(f"cron {text!r}: {name} step must be at least 1, got {step_text!r}")
        if span == "*":
            first, last = low, high
        elif "-" in span:
            a, _, b = span.partition("-")
            first, last = _number(a, name, text, names), _number(b, name, text, names)
        else:
            first = _number(span, name, text, names)
            last = high if step_text else first  # "5/15" means from 5 on, every 15
        for value in (first, last):
            if not low <= value <= high:
                raise CronError(f"cron {text!r}: {name} {value} is outside {low}-{high}")
        if first > last:
            raise CronError(f"cron {text!r}: {name} range {span!r} runs backwards")
        values.update(range(first, last + 1, step))
    return frozenset(values)


def _number(token: str, name: str, text: str, names: dict[str, int]) -> int:
    key = token.strip().lower()
    if key in names:
        return names[key]
    if not key.isdigit():
        raise CronError(f"cron {text!r}: {name} has {token!r}, not a number")
    return int(key)
