"""The alert rules' comments tell the on-call what happened; they must match
what the workers do (issue #12 item 26)."""

from __future__ import annotations

from pathlib import Path

ALERTS = Path(__file__).parents[2] / "deploy" / "prometheus" / "alerts.yml"


def comment_above(alert: str) -> str:
    """The comment lines right above `- alert: <alert>`."""
    lines = ALERTS.read_text().splitlines()
    at = next(n for n, line in enumerate(lines) if line.strip() == f"- alert: {alert}")
    comment = []
    for line in reversed(lines[:at]):
        if not line.strip().startswith("#"):
            break
        comment.insert(0, line.strip().lstrip("#").strip())
    return " ".join(comment)


def test_the_dead_letter_alert_says_the_item_is_failed_not_pending() -> None:
    # workers.give_up marks the item failed when its message is dead-lettered;
    # nothing republishes it, so the comment must not promise a retry.
    comment = comment_above("BatchDeadLetterQueueGrowing")
    assert "marked failed" in comment
    assert "stays pending" not in comment
    assert "reconciler republishes" not in comment
