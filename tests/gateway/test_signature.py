"""Unit tests of the callback signature check (ASSETPAY.md §6): no database, no HTTP."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from assetpay_merchant.gateway.signature import SignatureError, sign, signature_header, verify

# The SDK's test vector.
SECRET = b"current-secret"
DELIVERY_ID = "delivery-1"
TIMESTAMP = "2026-07-31T12:00:00.000Z"
BODY = b'{"event":"trade.completed","tradeId":"trade-1"}'
EXPECTED = "264a1a0c4deb4462658b9cc21cce4bf2baaf8da9dd7dd1a51bbd71e0f4d81135"
ZEROS = "0" * 64
NOW = datetime(2026, 7, 31, 12, 0, 0, tzinfo=UTC)
VECTOR_HEADER = f"t={TIMESTAMP},id={DELIVERY_ID},s={EXPECTED}"


def _error_key(header: str | None, body: bytes = BODY, *, now: datetime = NOW, secrets=(SECRET,)) -> str:
    with pytest.raises(SignatureError) as caught:
        verify(header, body, secrets=secrets, now=now)
    return caught.value.key


def test_sign_matches_the_sdk_vector():
    assert sign(SECRET, DELIVERY_ID, TIMESTAMP, BODY) == EXPECTED


def test_signature_header_is_what_assetpay_sends():
    assert signature_header(SECRET, DELIVERY_ID, TIMESTAMP, BODY) == VECTOR_HEADER


def test_the_vector_verifies():
    delivery = verify(VECTOR_HEADER, BODY, secrets=[SECRET], now=NOW)
    assert delivery.delivery_id == "delivery-1"
    assert delivery.timestamp == NOW


def test_rotation_vector_s1_matches_a_later_secret():
    header = f"t={TIMESTAMP},id={DELIVERY_ID},s={ZEROS},s1={EXPECTED}"
    delivery = verify(header, BODY, secrets=[b"new-secret", SECRET], now=NOW)
    assert delivery.delivery_id == "delivery-1"


def test_rotation_s_made_with_the_old_secret_is_accepted():
    assert verify(VECTOR_HEADER, BODY, secrets=[b"new-secret", SECRET], now=NOW).delivery_id == "delivery-1"


def test_rotation_vector_fails_without_the_old_secret():
    header = f"t={TIMESTAMP},id={DELIVERY_ID},s={ZEROS},s1={EXPECTED}"
    assert _error_key(header, secrets=[b"new-secret"]) == "SIGNATURE_MISMATCH"


def test_zeros_alone_do_not_verify():
    assert _error_key(f"t={TIMESTAMP},id={DELIVERY_ID},s={ZEROS}") == "SIGNATURE_MISMATCH"


def test_signature_in_an_unknown_field_is_not_used():
    header = f"t={TIMESTAMP},id={DELIVERY_ID},s={ZEROS},s2={EXPECTED}"
    assert _error_key(header) == "SIGNATURE_MISMATCH"


def test_upper_case_hex_is_not_the_signature():
    assert _error_key(f"t={TIMESTAMP},id={DELIVERY_ID},s={EXPECTED.upper()}") == "SIGNATURE_MISMATCH"


def test_field_order_and_spaces_around_fields_do_not_matter():
    header = f" s={EXPECTED} , id={DELIVERY_ID},t={TIMESTAMP} "
    assert verify(header, BODY, secrets=[SECRET], now=NOW).delivery_id == "delivery-1"


@pytest.mark.parametrize("seconds", [300, -300, 0, 299])
def test_within_300_seconds_either_way_passes(seconds):
    now = NOW + timedelta(seconds=seconds)
    assert verify(VECTOR_HEADER, BODY, secrets=[SECRET], now=now).delivery_id == "delivery-1"


@pytest.mark.parametrize("seconds", [301, -301, 3600, -86400])
def test_beyond_300_seconds_either_way_fails(seconds):
    assert _error_key(VECTOR_HEADER, now=NOW + timedelta(seconds=seconds)) == "SIGNATURE_TIMESTAMP_EXPIRED"


def test_half_a_second_past_the_window_fails():
    assert _error_key(VECTOR_HEADER, now=NOW + timedelta(seconds=300, milliseconds=500)) == (
        "SIGNATURE_TIMESTAMP_EXPIRED"
    )


def test_tolerance_is_configurable():
    now = NOW + timedelta(seconds=61)
    with pytest.raises(SignatureError) as caught:
        verify(VECTOR_HEADER, BODY, secrets=[SECRET], now=now, tolerance_seconds=60)
    assert caught.value.key == "SIGNATURE_TIMESTAMP_EXPIRED"
    assert verify(VECTOR_HEADER, BODY, secrets=[SECRET], now=now, tolerance_seconds=61).timestamp == NOW


def test_expired_is_reported_even_when_the_signature_is_right():
    # The window is checked against the signed timestamp: a replay of a genuine old delivery is refused.
    assert _error_key(VECTOR_HEADER, now=NOW + timedelta(hours=2)) == "SIGNATURE_TIMESTAMP_EXPIRED"


def test_an_offset_timestamp_is_compared_as_an_instant():
    t = "2026-07-31T14:00:00.000+02:00"
    header = f"t={t},id={DELIVERY_ID},s={sign(SECRET, DELIVERY_ID, t, BODY)}"
    delivery = verify(header, BODY, secrets=[SECRET], now=NOW)
    assert delivery.timestamp == NOW
    assert delivery.timestamp.utcoffset() == timedelta(hours=2)


def test_the_exact_timestamp_string_is_signed():
    # The same instant written differently is a different message: the header string is signed, not the instant.
    t = "2026-07-31T12:00:00Z"
    header = f"t={t},id={DELIVERY_ID},s={EXPECTED}"
    assert _error_key(header) == "SIGNATURE_MISMATCH"


@pytest.mark.parametrize("header", [None, "", "   "])
def test_missing_header(header):
    assert _error_key(header) == "SIGNATURE_MISSING"


@pytest.mark.parametrize(
    "header",
    [
        pytest.param("garbage", id="no-equals"),
        pytest.param(f"t={TIMESTAMP};id={DELIVERY_ID};s={EXPECTED}", id="wrong-separator"),
        pytest.param(f"id={DELIVERY_ID},s={EXPECTED}", id="no-t"),
        pytest.param(f"t={TIMESTAMP},s={EXPECTED}", id="no-id"),
        pytest.param(f"t={TIMESTAMP},id={DELIVERY_ID}", id="no-s"),
        pytest.param(f"t={TIMESTAMP},id={DELIVERY_ID},s1={EXPECTED}", id="only-s1"),
        pytest.param(f"t={TIMESTAMP},id={DELIVERY_ID},s=", id="empty-s"),
        pytest.param(f"t=,id={DELIVERY_ID},s={EXPECTED}", id="empty-t"),
        pytest.param(f"t={TIMESTAMP},id={DELIVERY_ID},={EXPECTED}", id="empty-name"),
        pytest.param(f"t={TIMESTAMP},id={DELIVERY_ID},s={EXPECTED},s={ZEROS}", id="duplicated-s"),
        pytest.param(f"t={TIMESTAMP},t={TIMESTAMP},id={DELIVERY_ID},s={EXPECTED}", id="duplicated-t"),
        pytest.param(f"t={TIMESTAMP},id=other,id={DELIVERY_ID},s={EXPECTED}", id="duplicated-id"),
        pytest.param(f"t={TIMESTAMP},id={DELIVERY_ID},s={EXPECTED},", id="trailing-comma"),
    ],
)
def test_malformed_header(header):
    assert _error_key(header) == "SIGNATURE_MALFORMED"


def test_value_is_split_at_the_first_equals_sign():
    # "id=a=b" is the delivery id "a=b", not a malformed field.
    header = f"t={TIMESTAMP},id=a=b,s={sign(SECRET, 'a=b', TIMESTAMP, BODY)}"
    assert verify(header, BODY, secrets=[SECRET], now=NOW).delivery_id == "a=b"


@pytest.mark.parametrize(
    "timestamp",
    [
        pytest.param("yesterday", id="words"),
        pytest.param("1785499200", id="unix-seconds"),
        pytest.param("2026-13-31T12:00:00Z", id="month-13"),
        pytest.param("2026-07-31T12:00:00", id="no-timezone"),
        pytest.param("2026-07-31", id="date-only"),
    ],
)
def test_unusable_timestamp(timestamp):
    header = f"t={timestamp},id={DELIVERY_ID},s={sign(SECRET, DELIVERY_ID, timestamp, BODY)}"
    assert _error_key(header) == "SIGNATURE_TIMESTAMP_INVALID"


def test_wrong_secret_is_a_mismatch():
    header = signature_header(b"not-our-secret", DELIVERY_ID, TIMESTAMP, BODY)
    assert _error_key(header) == "SIGNATURE_MISMATCH"


def test_no_configured_secret_verifies_nothing():
    assert _error_key(VECTOR_HEADER, secrets=()) == "SIGNATURE_MISMATCH"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"event": "trade.completed", "tradeId": "trade-1"}', id="re-spaced"),
        pytest.param(b'{"tradeId":"trade-1","event":"trade.completed"}', id="keys-reordered"),
        pytest.param(BODY + b"\n", id="trailing-newline"),
        pytest.param(b'{"event":"trade.completed","tradeId":"trade-2"}', id="tampered"),
        pytest.param(b"", id="empty"),
    ],
)
def test_any_change_to_the_raw_body_is_a_mismatch(body):
    assert _error_key(VECTOR_HEADER, body) == "SIGNATURE_MISMATCH"


def test_the_delivery_id_is_part_of_the_signed_message():
    assert _error_key(f"t={TIMESTAMP},id=delivery-2,s={EXPECTED}") == "SIGNATURE_MISMATCH"


def test_the_error_carries_a_message():
    with pytest.raises(SignatureError) as caught:
        verify(None, BODY, secrets=[SECRET], now=NOW)
    assert "X-AssetPay-Signature" in caught.value.message
