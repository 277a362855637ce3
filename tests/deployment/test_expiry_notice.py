"""What deploy says next to an expiry: a tag deletes nothing, so it names what will, and when."""
from __future__ import annotations

from datetime import datetime, timezone

from deployment.expiry import deleter_notice


def test_the_notice_names_the_guard_its_switch_and_the_fallback_command() -> None:
    notice = deleter_notice(datetime(2026, 12, 7, 21, 0, tzinfo=timezone.utc))
    assert notice.startswith("2026-12-07T21:00:00Z: within an hour after that, the hourly teardown-expired workflow")
    assert "EXPIRED_TEARDOWN=true" in notice and "until then nothing does" in notice
    assert "python -m deployment.teardown --expired --yes" in notice and "\n" not in notice
