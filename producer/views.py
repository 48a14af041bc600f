"""Batch status as operators want it: counts by outcome, percent, rate, ETA."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.orm import Session

from producer.schemas import BatchView, Counts
from shared.batches import counts_from_items, counts_from_labels
from shared.db import now
from shared.models import FINISHED_BATCH_STATUSES, Batch
from shared.progress import Progress


def _aware(moment: datetime | None) -> datetime | None:
    if moment is not None and moment.tzinfo is None:  # SQLite returns naive UTC
        return moment.replace(tzinfo=UTC)
    return moment


def live_counts(session: Session, batch: Batch, progress: Progress) -> dict:
    """Final counts once finished; Redis while running; the database as fallback."""
    if batch.status in FINISHED_BATCH_STATUSES and batch.counts:
        return batch.counts
    labels = progress.counts(batch.id)
    if labels is not None:
        return counts_from_labels(labels, batch.total)
    return counts_from_items(session, batch.id)


def batch_view(session: Session, batch: Batch, progress: Progress) -> BatchView:
    counts = live_counts(session, batch, progress)
    finished = batch.total - counts.get("pending", 0)
    # Cancelled learners were never worked on: they would inflate the rate.
    worked = sum(counts.get(outcome, 0) for outcome in ("applied", "skipped", "failed"))
    started = _aware(batch.started_at) or _aware(batch.created_at)
    ended = _aware(batch.finished_at) or now()
    elapsed = (ended - started).total_seconds() if started else 0.0
    rate = worked / elapsed if elapsed > 0 and worked else None
    eta = None
    if batch.status not in FINISHED_BATCH_STATUSES and rate:
        eta = round(counts.get("pending", 0) / rate, 1)
    return BatchView(
        id=batch.id,
        action=batch.action,
        params=batch.params or {},
        status=batch.status,
        total=batch.total,
        counts=Counts(**counts),
        percent=round(100.0 * finished / batch.total, 2) if batch.total else 100.0,
        rate_per_second=round(rate, 1) if rate else None,
        eta_seconds=eta,
        created_at=_aware(batch.created_at),
        started_at=_aware(batch.started_at),
        finished_at=_aware(batch.finished_at),
        cancel_reason=batch.cancel_reason,
        retry_of=batch.retry_of,
    )
