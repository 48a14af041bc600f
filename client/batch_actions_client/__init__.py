"""The Python client of the Batch Actions API: `BatchClient` to submit, wait
and read results (also as CSV), `read_selection` to turn a CSV of emails,
external ids or learner ids into a selection, and `verify_webhook` for the
webhook deliveries. Depends on httpx only."""

from batch_actions_client.client import FINISHED, ApiError, ApiUnreachable, BatchClient
from batch_actions_client.retries import retry_after_seconds
from batch_actions_client.selection_csv import MAX_LEARNERS, SelectionFileError, read_selection
from batch_actions_client.webhooks import WebhookVerificationError, verify_webhook

__version__ = "0.1.0"
__all__ = [
    "FINISHED",
    "MAX_LEARNERS",
    "ApiError",
    "ApiUnreachable",
    "BatchClient",
    "SelectionFileError",
    "WebhookVerificationError",
    "read_selection",
    "retry_after_seconds",
    "verify_webhook",
]
