"""The Idempotency-Key header as it is stored: a keyed hash, never the text.

A client chooses the key, and nothing stops it from putting an email or a
name in it (`invite zed@mail.example.org`); a purged learner must not live
on in `batches.idempotency_key`. Finding a batch by its key needs equality
only, so the key is stored as its HMAC-SHA256 under a key derived from
SIGNING_KEY: a database dump does not let anyone confirm a guess either. The
fingerprint of the body the key was used with (`batches.request_hash`) is
keyed the same way: a plain hash of a body whose search text is an email
would let anyone holding a dump confirm that email.
Without SIGNING_KEY (the embedded mode) the derivation is from a fixed empty
key, which hides the text but not a guess. While SIGNING_KEY is being rotated
a retry is still recognised under SIGNING_KEY_PREVIOUS.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from shared.settings import Settings

# Stored hashes depend on it: changing it forgets every stored key.
PURPOSE = b"idempotency keys"


def hashing_keys(settings: Settings) -> list[bytes]:
    """The key new batches are stored under, then any other still accepted."""
    secrets = [k for k in (settings.signing_key, settings.signing_key_previous) if k] or [""]
    return [hmac.digest(secret.encode(), PURPOSE, hashlib.sha256) for secret in secrets]


def digest(key: bytes, idempotency_key: str) -> str:
    return hmac.new(key, idempotency_key.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class IdempotencyKey:
    """What a submit stores (`stored`) and looks a retry up by (`accepted`),
    and the hashing keys, current first, for the body's fingerprint."""

    stored: str
    accepted: tuple[str, ...]
    keys: tuple[bytes, ...]

    def body_fingerprints(self, body_hash: str) -> tuple[str, ...]:
        """`body_hash` (producer.submit.request_hash) as stored, current key first."""
        return tuple(digest(key, body_hash) for key in self.keys)


def hashed(idempotency_key: str | None, settings: Settings) -> IdempotencyKey | None:
    if not idempotency_key:
        return None
    keys = tuple(hashing_keys(settings))
    digests = tuple(digest(key, idempotency_key) for key in keys)
    return IdempotencyKey(stored=digests[0], accepted=digests, keys=keys)
