"""The same check as tier 1's, on PostgreSQL: timestamptz values are shown in
UTC with their offset, like SQLite's (issue #12 item 27)."""

from tests.unit.test_timestamps import (  # noqa: F401 (collected here too)
    api,
    test_item_and_batch_timestamps_are_utc_with_an_offset,
)
