"""Pure: backup schedules (cron, UTC) and retention.

Cron expressions are parsed and evaluated by cronsim (the parser Healthchecks, a cron
monitoring service, is built on: Debian cron's semantics, no dependencies, typed); the
``@daily``-style macros it leaves out are spelled out here. Times are whole UTC minutes.

A schedule fires at most once per slot and never catches up on several missed ones: the
operator records the last slot it acted on (``status.backup.lastScheduleTime``) and starts
a backup when the latest slot at or before now is newer. Retention is decided only right
after a scheduled backup succeeded, over the cluster's scheduled backups: the newest
successful one is always kept; older successful ones go when they are beyond the newest
``keep`` or older than ``max_age``; failed ones older than the newest success go too.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass

import cronsim

MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
          "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
          "@hourly": "0 * * * *"}
# The shape the CRD checks (five fields or a macro); ``problem`` checks the rest.
SHAPE = r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|[^ ]+( +[^ ]+){4})$"
AGE = r"^([0-9]+(d|h|m|s))+$"
_AGE_PART = re.compile(r"([0-9]+)(d|h|m|s)")
_AGE_UNIT = {"d": 86400, "h": 3600, "m": 60, "s": 1}
# Scheduled backups are named <cluster>-<yyyymmddhhmm>; their Jobs <that>-backup and
# <that>-delete must stay within 63 characters.
NAME_MAX = 56
_STAMP = 12


def expression(text: str) -> str:
    text = " ".join(text.split())
    return MACROS.get(text, text)


def problem(text: str) -> str | None:
    """Why ``text`` is not a cron expression this operator runs, or None."""
    if not re.fullmatch(SHAPE, " ".join(text.split())):
        return ("must be five fields (minute hour day-of-month month day-of-week) or one of "
                + ", ".join(MACROS))
    try:
        it = cronsim.CronSim(expression(text), dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
        next(it)
    except cronsim.CronSimError as exc:
        return f"not a cron expression: {exc}"
    except StopIteration:
        return "never fires"
    return None


def _minute(t: dt.datetime) -> dt.datetime:
    return t.astimezone(dt.UTC).replace(second=0, microsecond=0)


def latest(text: str, now: dt.datetime) -> dt.datetime | None:
    """The latest slot at or before ``now``."""
    start = _minute(now) + dt.timedelta(minutes=1)  # cronsim's start is exclusive
    try:
        return next(cronsim.CronSim(expression(text), start, reverse=True))
    except StopIteration:
        return None


def following(text: str, now: dt.datetime) -> dt.datetime | None:
    """The first slot after ``now``."""
    try:
        return next(cronsim.CronSim(expression(text), _minute(now)))
    except StopIteration:
        return None


def backup_name(cluster: str, slot: dt.datetime) -> str:
    prefix = cluster[:NAME_MAX - _STAMP - 1].rstrip("-")
    return f"{prefix}-{_minute(slot):%Y%m%d%H%M}"


def age_seconds(text: str) -> int:
    if not re.fullmatch(AGE, text):
        raise ValueError(f"not an age such as 30d or 12h: {text!r}")
    return sum(int(n) * _AGE_UNIT[u] for n, u in _AGE_PART.findall(text))


@dataclass(frozen=True, slots=True)
class Record:
    """A scheduled backup as retention sees it."""

    name: str
    created: dt.datetime          # when the backup was taken (or its object created)
    succeeded: bool


def expired(records: Iterable[Record], keep: int | None, max_age: int | None,
            now: dt.datetime) -> list[str]:
    """Names of the backups retention removes now, oldest first."""
    ordered = sorted(records, key=lambda r: (r.created, r.name), reverse=True)
    good = [r for r in ordered if r.succeeded]
    if not good:
        return []
    newest = good[0]
    out = []
    for rank, r in enumerate(good[1:], start=2):
        too_many = keep is not None and rank > keep
        too_old = max_age is not None and (now - r.created).total_seconds() > max_age
        if too_many or too_old:
            out.append(r)
    out += [r for r in ordered if not r.succeeded and r.created < newest.created]
    return [r.name for r in sorted(out, key=lambda r: (r.created, r.name))]
