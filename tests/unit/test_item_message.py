"""An item's message is Dramatiq's, its id a random UUID's text as
`str(uuid.uuid4())` would give (shared.dispatch.item_message)."""

from __future__ import annotations

import uuid

from shared.dispatch import item_message


def test_item_messages_have_distinct_version_4_uuid_ids_and_a_creation_time():
    messages = [item_message("add_to_group", 7, learner_id) for learner_id in range(5000)]
    ids = [uuid.UUID(m.message_id) for m in messages]
    assert all(i.version == 4 and i.variant == uuid.RFC_4122 for i in ids)
    assert [str(i) for i in ids] == [m.message_id for m in messages]
    assert len(set(ids)) == len(ids)
    assert all(m.message_timestamp > 1.7e12 for m in messages)
    assert messages[0].args == (7, 0) and messages[0].options == {}
    assert item_message("add_to_group", 7, 1, priority=1).options == {"broker_priority": 1}
