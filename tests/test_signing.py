"""Standard Webhooks signatures: secrets, sign/verify, every malformed header, interop."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from datetime import UTC, datetime

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from mirrorhook import message
from mirrorhook.errors import SignatureError, TimestampError
from mirrorhook.signing import (
    TOLERANCE,
    Secret,
    Verified,
    new_secret,
    sign,
    signed_headers,
    verify,
)

SECRET_TEXT = "whsec_" + base64.b64encode(bytes(range(32))).decode("ascii")
SECRET = Secret.parse(SECRET_TEXT)
OTHER_SECRET = Secret.parse("whsec_" + base64.b64encode(bytes(range(100, 132))).decode("ascii"))
NOW = 1_700_000_000
MSG_ID = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"
BODY = message.new_update("CURRENT", "2024-05-01T12:00:00Z", "upstream", NOW).encode()


def _headers(
    *, msg_id: str = MSG_ID, timestamp: int = NOW, body: bytes = BODY, secret: Secret = SECRET
) -> dict[str, str]:
    """Return genuine headers for one message (by default: MSG_ID, NOW, BODY, SECRET)."""
    return signed_headers(secret, msg_id, timestamp, body)


# --- secrets ---


def test_secret_parse_reads_the_whsec_form() -> None:
    """``whsec_<base64>`` (with the newline a secret file ends with) gives the decoded key."""
    assert Secret.parse(SECRET_TEXT + "\n").key == bytes(range(32))


def test_secret_never_shows_its_key() -> None:
    """repr and str of a Secret show neither the raw key nor its base64 text."""
    encoded = SECRET_TEXT.removeprefix("whsec_")
    for shown in (repr(SECRET), str(SECRET), f"{SECRET}", f"{SECRET!r}", repr([SECRET])):
        assert encoded not in shown
        assert encoded[:8] not in shown
        assert str(SECRET.key) not in shown
        assert "redacted" in shown


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        pytest.param(base64.b64encode(bytes(32)).decode(), "whsec_", id="no-prefix"),
        pytest.param("WHSEC_" + base64.b64encode(bytes(32)).decode(), "whsec_", id="upper-prefix"),
        pytest.param("whsec_not*valid&base64!", "base64", id="invalid-base64"),
        pytest.param("whsec_" + base64.b64encode(bytes(15)).decode(), "too short", id="15-bytes"),
        pytest.param("whsec_", "too short", id="empty-key"),
    ],
)
def test_secret_parse_errors_name_the_problem_not_the_value(text: str, fragment: str) -> None:
    """A malformed secret raises ValueError saying what is wrong, without echoing the secret."""
    with pytest.raises(ValueError, match=fragment) as caught:
        Secret.parse(text)
    assert text not in str(caught.value)


def test_secret_of_16_bytes_is_long_enough() -> None:
    """16 bytes is the shortest key accepted."""
    assert len(Secret.parse("whsec_" + base64.b64encode(bytes(16)).decode()).key) == 16


def test_new_secret_is_whsec_and_base64_of_32_bytes() -> None:
    """``mirrorhook secret`` prints the Standard Webhooks form, which Secret.parse accepts."""
    text = new_secret()
    assert text.startswith("whsec_")
    key = base64.b64decode(text.removeprefix("whsec_"), validate=True)
    assert len(key) == 32
    assert Secret.parse(text).key == key


def test_new_secret_is_different_each_call() -> None:
    """Secrets are random: a hundred calls give a hundred different secrets."""
    assert len({new_secret() for _ in range(100)}) == 100


# --- signing and verifying ---


def test_signed_headers_verify() -> None:
    """Headers made by signed_headers() verify, returning the message's id and timestamp."""
    assert verify(SECRET, _headers(), BODY, now=NOW) == Verified(MSG_ID, NOW)


def test_signature_is_the_spec_formula() -> None:
    """docs/design.md#the-webhook-wire-format: ``v1,`` + base64(HMAC-SHA256(key,
    f"{id}.{timestamp}.{body}"))."""
    digest = hmac.new(bytes(range(32)), f"{MSG_ID}.{NOW}.".encode() + BODY, hashlib.sha256)
    assert sign(SECRET, MSG_ID, NOW, BODY) == "v1," + base64.b64encode(digest.digest()).decode()


def test_signed_headers_carry_id_timestamp_and_signature() -> None:
    """The three headers hold the id, the integer timestamp and the signature."""
    assert _headers() == {
        "webhook-id": MSG_ID,
        "webhook-timestamp": str(NOW),
        "webhook-signature": sign(SECRET, MSG_ID, NOW, BODY),
    }


def test_non_utf8_body_with_genuine_signature_verifies() -> None:
    """The body's bytes are signed as they are: verifying never decodes them."""
    body = b"\xff\xfe binary \x00"
    assert verify(SECRET, _headers(body=body), body, now=NOW) == Verified(MSG_ID, NOW)


def test_id_of_256_printable_characters_verifies() -> None:
    """An id up to 256 printable ASCII characters is accepted."""
    msg_id = "!~" * 128
    assert verify(SECRET, _headers(msg_id=msg_id), BODY, now=NOW).msg_id == msg_id


@pytest.mark.parametrize(
    "signatures",
    [
        "v1,AAAA {genuine}",
        "{genuine} v1,AAAA",
        "v2,xyz v1,notbase64! {genuine}",
        "v1 {genuine} v1,",
    ],
)
def test_any_one_valid_signature_in_a_list_passes(signatures: str) -> None:
    """A space-separated list of signatures passes when any one of them is genuine."""
    headers = _headers()
    headers["webhook-signature"] = signatures.format(genuine=headers["webhook-signature"])
    assert verify(SECRET, headers, BODY, now=NOW) == Verified(MSG_ID, NOW)


@pytest.mark.parametrize("offset", [-TOLERANCE, 0, TOLERANCE])
def test_timestamp_within_tolerance_passes(offset: int) -> None:
    """A timestamp up to exactly 300 s ahead of or behind our clock is accepted."""
    headers = _headers(timestamp=NOW + offset)
    assert verify(SECRET, headers, BODY, now=NOW).timestamp == NOW + offset


@pytest.mark.parametrize(("offset", "direction"), [(TOLERANCE + 1, "ahead"), (-301, "behind")])
def test_timestamp_outside_tolerance_raises_timestamp_error(offset: int, direction: str) -> None:
    """301 s off is refused with a TimestampError saying which way the clock is off."""
    with pytest.raises(TimestampError) as caught:
        verify(SECRET, _headers(timestamp=NOW + offset), BODY, now=NOW)
    assert isinstance(caught.value, SignatureError)
    assert caught.value.skew == offset
    assert direction in str(caught.value)
    assert "NTP" in str(caught.value)
    assert "301" in str(caught.value)


def _drop(name: str) -> dict[str, str]:
    headers = _headers()
    del headers[name]
    return headers


def _set(name: str, value: str) -> dict[str, str]:
    headers = _headers()
    headers[name] = value
    return headers


GENUINE = sign(SECRET, MSG_ID, NOW, BODY)
GENUINE_BASE64 = GENUINE.removeprefix("v1,")
FULLWIDTH_NOW = "".join(chr(0xFF10 + int(digit)) for digit in str(NOW))  # int() would accept it

REJECTED = [
    pytest.param(_drop("webhook-id"), BODY, id="missing-id"),
    pytest.param(_drop("webhook-timestamp"), BODY, id="missing-timestamp"),
    pytest.param(_drop("webhook-signature"), BODY, id="missing-signature"),
    pytest.param({}, BODY, id="no-headers"),
    pytest.param(_set("webhook-id", ""), BODY, id="empty-id"),
    pytest.param(_set("webhook-signature", ""), BODY, id="empty-signature"),
    pytest.param(_set("webhook-signature", "v1" + GENUINE_BASE64), BODY, id="no-comma"),
    pytest.param(_set("webhook-signature", "v1,@@not-base64@@"), BODY, id="bad-base64"),
    pytest.param(_set("webhook-signature", "v1," + GENUINE_BASE64[:-2]), BODY, id="cut-base64"),
    pytest.param(_set("webhook-signature", "v2," + GENUINE_BASE64), BODY, id="unknown-version"),
    pytest.param(_set("webhook-signature", "V1," + GENUINE_BASE64), BODY, id="upper-version"),
    pytest.param(_set("webhook-signature", "v1,,,"), BODY, id="commas-only"),
    pytest.param(_headers(secret=OTHER_SECRET), BODY, id="wrong-secret"),
    pytest.param(_headers(), BODY + b" ", id="altered-body"),
    pytest.param(_headers(), b"", id="empty-body"),
    pytest.param(_set("webhook-id", MSG_ID + "x"), BODY, id="altered-id"),
    pytest.param(_set("webhook-timestamp", str(NOW + 1)), BODY, id="altered-timestamp"),
    pytest.param(_set("webhook-timestamp", "now"), BODY, id="timestamp-word"),
    pytest.param(_set("webhook-timestamp", f"{NOW}.0"), BODY, id="timestamp-fractional"),
    pytest.param(_set("webhook-timestamp", f"{NOW}.5"), BODY, id="timestamp-half"),
    pytest.param(_set("webhook-timestamp", f"-{NOW}"), BODY, id="timestamp-negative"),
    pytest.param(_set("webhook-timestamp", "-1"), BODY, id="timestamp-minus-one"),
    pytest.param(_set("webhook-timestamp", f"+{NOW}"), BODY, id="timestamp-plus-sign"),
    pytest.param(_set("webhook-timestamp", f" {NOW}"), BODY, id="timestamp-space"),
    pytest.param(_set("webhook-timestamp", "1e9"), BODY, id="timestamp-exponent"),
    pytest.param(_set("webhook-timestamp", "9" * 12), BODY, id="timestamp-far-future"),
    pytest.param(_set("webhook-timestamp", "1" + "0" * 400), BODY, id="timestamp-huge"),
    pytest.param(_set("webhook-timestamp", FULLWIDTH_NOW), BODY, id="timestamp-fullwidth"),
    pytest.param(_set("webhook-timestamp", "0"), BODY, id="timestamp-zero"),
    pytest.param(_set("webhook-id", "msg 1"), BODY, id="id-with-space"),
    pytest.param(_set("webhook-id", "x" * 257), BODY, id="id-257-chars"),
    pytest.param(_set("webhook-id", "msg\n1"), BODY, id="id-with-newline"),
    pytest.param(_set("webhook-id", "msgé"), BODY, id="id-non-ascii"),
    pytest.param(_headers(), b"\xff\xfe\xfd", id="non-utf8-body-wrong-signature"),
]


@pytest.mark.parametrize(("headers", "body"), REJECTED)
def test_verify_rejects_with_signature_error_only(headers: dict[str, str], body: bytes) -> None:
    """Every missing, malformed or non-matching header raises SignatureError, nothing else."""
    with pytest.raises(SignatureError):
        verify(SECRET, headers, body, now=NOW)


def test_verify_rejects_non_ascii_signature_with_signature_error() -> None:
    """A ``v1,`` signature with non-ASCII characters is malformed: SignatureError (401)."""
    with pytest.raises(SignatureError):
        verify(SECRET, _set("webhook-signature", "v1,é"), BODY, now=NOW)


# --- interoperability with the reference library ---

BODIES = [
    pytest.param(BODY, id="wire-body"),
    pytest.param('{"data": {"current": "été 🌞"}}'.encode(), id="non-ascii-body"),
]


@pytest.mark.parametrize("body", BODIES)
def test_our_signature_verifies_with_the_reference_library(body: bytes) -> None:
    """standardwebhooks' Webhook.verify accepts what our sign() produces."""
    now = int(time.time())  # the reference library reads the wall clock itself
    headers = signed_headers(SECRET, MSG_ID, now, body)
    assert Webhook(SECRET_TEXT).verify(body.decode(), headers) == json.loads(body)


@pytest.mark.parametrize("body", BODIES)
def test_reference_library_signature_verifies_with_ours(body: bytes) -> None:
    """Our verify() accepts the header standardwebhooks' Webhook.sign produces."""
    header = Webhook(SECRET_TEXT).sign(MSG_ID, datetime.fromtimestamp(NOW, UTC), body.decode())
    headers = {"webhook-id": MSG_ID, "webhook-timestamp": str(NOW), "webhook-signature": header}
    assert verify(SECRET, headers, body, now=NOW) == Verified(MSG_ID, NOW)


def test_reference_library_rejects_our_signature_under_another_secret() -> None:
    """The reference library refuses another secret's signature, so its acceptance above counts."""
    now = int(time.time())
    headers = signed_headers(OTHER_SECRET, MSG_ID, now, BODY)
    with pytest.raises(WebhookVerificationError, match="signature"):
        Webhook(SECRET_TEXT).verify(BODY.decode(), headers)


# --- property: verify() raises SignatureError or returns, for any input ---

_WELL_FORMED_IDS = st.from_regex(r"[\x21-\x7e]{1,256}", fullmatch=True)
_IDS = st.one_of(st.text(max_size=300), _WELL_FORMED_IDS)
_IN_WINDOW_TIMESTAMPS = st.integers(NOW - TOLERANCE - 2, NOW + TOLERANCE + 2).map(str)
_TIMESTAMPS = st.one_of(st.text(max_size=20), _IN_WINDOW_TIMESTAMPS, st.integers().map(str))
_SIGNATURE_ITEMS = st.one_of(
    st.text(max_size=60),
    st.builds(
        "{},{}".format,
        st.sampled_from(["v1", "v2", "", "V1", "v1 "]),
        st.one_of(
            st.text(max_size=60),
            st.binary(max_size=40).map(lambda raw: base64.b64encode(raw).decode()),
        ),
    ),
)
_SIGNATURES = st.lists(_SIGNATURE_ITEMS, max_size=4).map(" ".join)
_HEADERS = st.one_of(
    # Anything at all, each header present or not...
    st.fixed_dictionaries(
        {},
        optional={
            "webhook-id": _IDS,
            "webhook-timestamp": _TIMESTAMPS,
            "webhook-signature": _SIGNATURES,
        },
    ),
    # ... and a well-formed id and timestamp, so the signature parsing is reached often.
    st.fixed_dictionaries(
        {
            "webhook-id": _WELL_FORMED_IDS,
            "webhook-timestamp": _IN_WINDOW_TIMESTAMPS,
            "webhook-signature": _SIGNATURES,
        }
    ),
)


def _genuine_signature(headers: dict[str, str], body: bytes) -> str | None:
    """Return the genuine signature for these headers, if they name an id and a timestamp."""
    msg_id = headers.get("webhook-id")
    raw_timestamp = headers.get("webhook-timestamp", "")
    if not msg_id or not (raw_timestamp.isascii() and raw_timestamp.isdigit()):
        return None
    try:
        return sign(SECRET, msg_id, int(raw_timestamp), body)
    except (UnicodeEncodeError, ValueError):  # lone surrogates, or too many digits for int()
        return None


@example(
    headers={"webhook-id": MSG_ID, "webhook-timestamp": str(NOW), "webhook-signature": "v1,é"},
    body=BODY,
    add_genuine=False,
)
@given(headers=_HEADERS, body=st.binary(max_size=200), add_genuine=st.booleans())
def test_verify_raises_only_signature_error_for_any_input(
    headers: dict[str, str], body: bytes, add_genuine: bool
) -> None:
    """For arbitrary headers and body, verify() raises SignatureError or returns, and it
    returns only when one of the listed signatures is the genuine one."""
    genuine = _genuine_signature(headers, body)
    if add_genuine and genuine is not None:
        listed = headers.get("webhook-signature", "")
        headers = {**headers, "webhook-signature": f"{listed} {genuine}"}
    try:
        verified = verify(SECRET, headers, body, now=NOW)
    except SignatureError:
        return
    assert genuine is not None
    assert genuine in headers["webhook-signature"].split()
    assert verified == Verified(headers["webhook-id"], int(headers["webhook-timestamp"]))


def test_genuine_signature_helper_matches_sign() -> None:
    """The property test's oracle computes the same signature as signed_headers()."""
    assert _genuine_signature(_headers(), BODY) == GENUINE
