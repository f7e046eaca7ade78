"""Standard Webhooks signing for callbacks, and the verification helper for receivers.

swarmgate signs every callback it sends the Standard Webhooks way (https://www.standardwebhooks.com):
three headers, ``webhook-id`` (stable across retries), ``webhook-timestamp`` (unix seconds) and
``webhook-signature`` (``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``, space-separated when
several secrets are live during a rotation). Secrets are shown as ``whsec_<base64>``.

A receiver checks a callback with :func:`verify` and drops retries with :class:`Deduper`::

    from gateway.security.webhooks import Deduper, verify
    dedupe = Deduper()                                # once per receiver process
    body = await request.read()                       # in the aiohttp handler
    msg_id = verify([SECRET], request.headers, body)  # WebhookVerificationError -> answer 400
    if not dedupe.seen(msg_id): process(body)         # a retry carries the same webhook-id

:func:`verify` compares in constant time, accepts a timestamp within 5 minutes of now (either
way), and accepts the message when any ``v1`` signature matches any of the given secrets, so a
receiver can list the old and the new secret while it rotates.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets as _secrets
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence

__all__ = [
    "DEFAULT_TOLERANCE_S",
    "SECRET_PREFIX",
    "Deduper",
    "WebhookVerificationError",
    "decode_secret",
    "generate_secret",
    "sign",
    "signed_headers",
    "verify",
]

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE_S = 300
MIN_SECRET_BYTES = 24  # Standard Webhooks: secrets are 24 to 64 random bytes
SIGNATURE_VERSION = "v1"

HEADER_ID = "webhook-id"
HEADER_TIMESTAMP = "webhook-timestamp"
HEADER_SIGNATURE = "webhook-signature"


class WebhookVerificationError(Exception):
    """The webhook could not be verified (missing headers, stale timestamp or bad signature)."""


def generate_secret() -> str:
    """A new signing secret: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(_secrets.token_bytes(32)).decode("ascii")


def decode_secret(secret: str) -> bytes:
    """The key bytes of a ``whsec_<base64>`` secret (the prefix is optional).

    Raises ValueError when the secret is not valid base64 or is shorter than 24 bytes.
    """
    if not isinstance(secret, str):
        raise ValueError("webhook secret must be a string")
    text = secret.strip()
    if text.startswith(SECRET_PREFIX):
        text = text[len(SECRET_PREFIX) :]
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("webhook secret is not valid base64") from None
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(f"webhook secret must be at least {MIN_SECRET_BYTES} bytes")
    return key


def _signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> bytes:
    content = f"{msg_id}.{timestamp}.".encode() + body
    return hmac.new(key, content, hashlib.sha256).digest()


def sign(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,<base64>`` for each secret, space-separated."""
    if isinstance(secrets, str):
        raise TypeError("secrets must be a sequence of secrets, not a single string")
    if not secrets:
        raise ValueError("at least one webhook secret is required")
    if not msg_id:
        raise ValueError("webhook id must not be empty")
    return " ".join(
        f"{SIGNATURE_VERSION},"
        + base64.b64encode(_signature(decode_secret(s), msg_id, timestamp, body)).decode("ascii")
        for s in secrets
    )


def signed_headers(secrets: Sequence[str], msg_id: str, body: bytes, now: int) -> dict[str, str]:
    """The three Standard Webhooks headers for ``body`` sent at unix time ``now``."""
    return {
        HEADER_ID: msg_id,
        HEADER_TIMESTAMP: str(now),
        HEADER_SIGNATURE: sign(secrets, msg_id, now, body),
    }


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is None:  # plain dicts are case-sensitive; multidicts are not
        for key, val in headers.items():
            if key.lower() == name:
                value = val
                break
    if value is None or not value.strip():
        raise WebhookVerificationError(f"missing {name} header")
    return value.strip()


def verify(
    secrets: Sequence[str],
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    now: int | None = None,
) -> str:
    """Check a received webhook; return its ``webhook-id`` (use it to dedupe).

    Raises WebhookVerificationError when a header is missing, the timestamp is more than
    ``tolerance_s`` away from ``now``, or no ``v1`` signature matches any of ``secrets``.
    Raises ValueError when a secret itself is malformed (a configuration error).
    """
    if isinstance(secrets, str):
        raise TypeError("secrets must be a sequence of secrets, not a single string")
    if not secrets:
        raise ValueError("at least one webhook secret is required")
    keys = [decode_secret(s) for s in secrets]

    msg_id = _header(headers, HEADER_ID)
    raw_ts = _header(headers, HEADER_TIMESTAMP)
    raw_sig = _header(headers, HEADER_SIGNATURE)

    if not raw_ts.isascii() or not raw_ts.isdigit() or len(raw_ts) > 12:
        raise WebhookVerificationError("invalid webhook-timestamp header")
    timestamp = int(raw_ts)
    current = int(time.time()) if now is None else now
    if current - timestamp > tolerance_s:
        raise WebhookVerificationError("webhook timestamp is too old")
    if timestamp - current > tolerance_s:
        raise WebhookVerificationError("webhook timestamp is in the future")

    given: list[bytes] = []
    for entry in raw_sig.split():
        version, sep, value = entry.partition(",")
        if not sep or version != SIGNATURE_VERSION:
            continue
        try:
            given.append(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            continue
    if not given:
        raise WebhookVerificationError("no v1 signature in webhook-signature header")

    matched = False
    for key in keys:
        expected = _signature(key, msg_id, timestamp, body)
        for candidate in given:
            # no early exit: every comparison runs, each in constant time
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise WebhookVerificationError("no matching webhook signature")
    return msg_id


class Deduper:
    """Remembers the last ``max_size`` webhook ids a receiver has seen (in memory, one process).

    ``seen(msg_id)`` is False the first time an id shows up and True on every retry after.
    Not thread-safe; use one per event loop.
    """

    def __init__(self, max_size: int = 10_000) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self.max_size = max_size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def seen(self, msg_id: str) -> bool:
        if msg_id in self._ids:
            self._ids.move_to_end(msg_id)
            return True
        self._ids[msg_id] = None
        if len(self._ids) > self.max_size:
            self._ids.popitem(last=False)
        return False

    def __len__(self) -> int:
        return len(self._ids)
