"""Expiry tags: `deploy --expires-in 2h` marks what it creates; `teardown --expired` removes it later.

The tag is `DeleteAfter` with an ISO-8601 UTC time, the governance-tag style of Azure cleanup
jobs. Without `--expires-in` nothing is tagged, so a production endpoint never expires by surprise.
"""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Mapping

from common.cli import UserError

DELETE_AFTER = "DeleteAfter"
_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


def parse_duration(text: str) -> timedelta:
    """'30m', '2h', '1d', '1h30m' -> timedelta; anything else is a UserError."""
    parts = re.findall(r"(\d+)\s*([mhd])", text.strip().lower())
    if not parts or re.sub(r"\s", "", text.strip().lower()) != "".join(n + u for n, u in parts):
        raise UserError(f"--expires-in takes a duration such as 30m, 2h, 1d or 1h30m; got {text!r}")
    duration = timedelta(**{_UNITS[u]: 0 for u in _UNITS})
    for number, unit in parts:
        duration += timedelta(**{_UNITS[unit]: int(number)})
    if duration <= timedelta(0):
        raise UserError(f"--expires-in must be longer than zero; got {text!r}")
    return duration


def stamp(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def deleter_notice(expires_at: datetime) -> str:
    """What will delete what deploy tagged, and when: an expiry tag alone deletes nothing."""
    return (f"{stamp(expires_at)}: within an hour after that, the hourly teardown-expired workflow deletes it once "
            "the repository enables it (variable EXPIRED_TEARDOWN=true, docs/GITHUB.md); until then nothing does: "
            "run `python -m deployment.teardown --expired --yes` after that time, or `python -m deployment.teardown "
            "--yes` now")


def expiry_tags(expires_at: datetime | None) -> dict[str, str]:
    return {DELETE_AFTER: stamp(expires_at)} if expires_at is not None else {}


def expires_at(tags: Mapping[str, str] | None) -> datetime | None:
    """The tagged expiry, or None (no tag, or one this tool cannot read: never treated as expired)."""
    value = (tags or {}).get(DELETE_AFTER)
    if not value:
        return None
    try:
        when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def is_expired(tags: Mapping[str, str] | None, now: datetime) -> bool:
    when = expires_at(tags)
    return when is not None and when <= now
