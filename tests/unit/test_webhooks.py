"""Standard Webhooks signing and the receiver-side verification helper."""

from __future__ import annotations

import base64
import time

import pytest
from multidict import CIMultiDict

from gateway.security.webhooks import (
    Deduper,
    WebhookVerificationError,
    decode_secret,
    generate_secret,
    sign,
    signed_headers,
    verify,
)

NOW = 1_700_000_000
BODY = b'{"state": "succeeded", "result": 42}'
MSG_ID = "msg_2b9c1f0e"


def test_a_signed_message_verifies_and_yields_its_id() -> None:
    secret = generate_secret()
    headers = signed_headers([secret], MSG_ID, BODY, NOW)
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert headers["webhook-timestamp"] == str(NOW)
    assert verify([secret], headers, BODY, now=NOW) == MSG_ID


def test_signatures_match_the_standard_webhooks_reference_vector() -> None:
    signature = sign(
        ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        b'{"test": 2432232314}',
    )
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_a_generated_secret_is_whsec_and_base64_of_32_random_bytes() -> None:
    a, b = generate_secret(), generate_secret()
    assert a.startswith("whsec_") and a != b
    assert len(base64.b64decode(a.removeprefix("whsec_"), validate=True)) == 32
    assert decode_secret(a) == decode_secret(a.removeprefix("whsec_"))


@pytest.mark.parametrize("bad", ["", "whsec_", "whsec_not base64!", "whsec_" + "A" * 8])
def test_a_malformed_or_short_secret_is_a_value_error(bad: str) -> None:
    with pytest.raises(ValueError):
        decode_secret(bad)


def test_during_rotation_each_secret_signs_and_either_one_verifies() -> None:
    old, new = generate_secret(), generate_secret()
    headers = signed_headers([old, new], MSG_ID, BODY, NOW)
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert all(part.startswith("v1,") for part in headers["webhook-signature"].split(" "))
    assert verify([old], headers, BODY, now=NOW) == MSG_ID
    assert verify([new], headers, BODY, now=NOW) == MSG_ID


def test_a_receiver_holding_old_and_new_secrets_accepts_either_sender() -> None:
    old, new = generate_secret(), generate_secret()
    for sender in (old, new):
        headers = signed_headers([sender], MSG_ID, BODY, NOW)
        assert verify([old, new], headers, BODY, now=NOW) == MSG_ID


def test_a_tampered_body_is_rejected() -> None:
    secret = generate_secret()
    headers = signed_headers([secret], MSG_ID, BODY, NOW)
    with pytest.raises(WebhookVerificationError, match="signature"):
        verify([secret], headers, BODY.replace(b"42", b"43"), now=NOW)


def test_a_tampered_id_or_timestamp_is_rejected() -> None:
    secret = generate_secret()
    headers = signed_headers([secret], MSG_ID, BODY, NOW)
    with pytest.raises(WebhookVerificationError):
        verify([secret], {**headers, "webhook-id": "msg_other"}, BODY, now=NOW)
    with pytest.raises(WebhookVerificationError):
        verify([secret], {**headers, "webhook-timestamp": str(NOW + 1)}, BODY, now=NOW)


def test_a_wrong_secret_is_rejected() -> None:
    headers = signed_headers([generate_secret()], MSG_ID, BODY, NOW)
    with pytest.raises(WebhookVerificationError, match="signature"):
        verify([generate_secret()], headers, BODY, now=NOW)


def test_a_timestamp_older_than_the_tolerance_is_rejected() -> None:
    secret = generate_secret()
    headers = signed_headers([secret], MSG_ID, BODY, NOW - 301)
    with pytest.raises(WebhookVerificationError, match="too old"):
        verify([secret], headers, BODY, now=NOW)


def test_a_timestamp_further_ahead_than_the_tolerance_is_rejected() -> None:
    secret = generate_secret()
    headers = signed_headers([secret], MSG_ID, BODY, NOW + 301)
    with pytest.raises(WebhookVerificationError, match="future"):
        verify([secret], headers, BODY, now=NOW)


def test_timestamps_within_five_minutes_either_way_are_accepted() -> None:
    secret = generate_secret()
    for sent in (NOW - 300, NOW + 300):
        assert verify([secret], signed_headers([secret], MSG_ID, BODY, sent), BODY, now=NOW)


def test_the_current_clock_is_used_when_now_is_not_given() -> None:
    secret = generate_secret()
    headers = signed_headers([secret], MSG_ID, BODY, int(time.time()))
    assert verify([secret], headers, BODY) == MSG_ID
    with pytest.raises(WebhookVerificationError):
        verify([secret], signed_headers([secret], MSG_ID, BODY, NOW), BODY)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_a_message_missing_a_webhook_header_is_rejected(missing: str) -> None:
    secret = generate_secret()
    headers = signed_headers([secret], MSG_ID, BODY, NOW)
    del headers[missing]
    with pytest.raises(WebhookVerificationError, match=missing):
        verify([secret], headers, BODY, now=NOW)


def test_a_non_numeric_timestamp_is_rejected() -> None:
    secret = generate_secret()
    headers = signed_headers([secret], MSG_ID, BODY, NOW)
    headers["webhook-timestamp"] = "2023-11-14T22:13:20Z"
    with pytest.raises(WebhookVerificationError, match="timestamp"):
        verify([secret], headers, BODY, now=NOW)


def test_header_names_are_matched_case_insensitively() -> None:
    secret = generate_secret()
    headers = signed_headers([secret], MSG_ID, BODY, NOW)
    title_case = {k.title(): v for k, v in headers.items()}
    assert verify([secret], title_case, BODY, now=NOW) == MSG_ID
    assert verify([secret], CIMultiDict(title_case), BODY, now=NOW) == MSG_ID


def test_signatures_of_other_versions_are_ignored_and_a_v1_match_still_counts() -> None:
    secret = generate_secret()
    headers = signed_headers([secret], MSG_ID, BODY, NOW)
    headers["webhook-signature"] = "v1a,abc v2,xyz v1,!!notbase64 " + headers["webhook-signature"]
    assert verify([secret], headers, BODY, now=NOW) == MSG_ID
    headers["webhook-signature"] = "v1a,abc v2,xyz"
    with pytest.raises(WebhookVerificationError):
        verify([secret], headers, BODY, now=NOW)


def test_the_deduper_reports_retries_as_seen_and_forgets_the_oldest_beyond_its_bound() -> None:
    dedupe = Deduper(max_size=3)
    assert [dedupe.seen(i) for i in ("a", "b", "a", "c", "d")] == [False, False, True, False, False]
    assert len(dedupe) == 3
    assert dedupe.seen("b") is False  # "b" was the least recently seen and was evicted
    assert dedupe.seen("d") is True
    assert dedupe.seen("a") is False  # remembering "b" again pushed out "a"
