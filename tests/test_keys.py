"""v1a (Ed25519) signatures: the reference library's test vector, interoperability with an
independent Ed25519 (PyNaCl, libsodium) both ways, mixed v1/v1a headers, hostile input,
key files and ``mirrorhook keygen``."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import nacl.signing
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mirrorhook import message
from mirrorhook.config import load_config
from mirrorhook.errors import ConfigError, SignatureError
from mirrorhook.keys import PublicKey, SigningKey
from mirrorhook.signing import (
    MAX_V1A_SIGNATURES,
    Secret,
    new_secret,
    sign,
    signed_headers,
    verify,
)
from tests.helpers import (
    fifo_released_after,
    key_pair,
    mirrorhook,
    publisher_toml,
    receiver_toml,
    write_secret,
)

NOW = 1_700_000_000
MSG_ID = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"
BODY = message.new_update("CURRENT", "2026-11-25T12:00:00Z", "upstream", NOW).encode()
SEED = bytes(range(32))
KEY = SigningKey(SEED)
OTHER = SigningKey(bytes(range(100, 132)))


def headers(signature: str, *, msg_id: str = MSG_ID, timestamp: int = NOW) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


def test_the_reference_libraries_test_vector() -> None:
    """The Go reference library's TestAsymmetricWebhookSign (standard-webhooks,
    libraries/go/webhook_asymmetric_test.go): the same seed, id, time and payload give
    its expected signature, byte for byte (Ed25519 is deterministic)."""
    seed = base64.b64decode("VEVTVFNJR05JTkdLRVlET05PVFVTRVRISVNGT1JBTlk=")
    expected = (
        "v1a,tQ9V2XOqn7jL/DQenEFpqIugdBVtiMmER5mhSkXBNwM0mkATuDe6KYYUuxqtaiHeYGb7KaaBRdM5"
        "WqyeFiL8Ag=="
    )
    key = SigningKey(seed)
    body = b'{"test": 2432232314}'
    assert sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == expected
    wire = headers(expected, msg_id="msg_p5jXN8AQM9LWM0D4loKWxJek", timestamp=1614265330)
    assert verify(key.public(), wire, body, now=1614265330).msg_id.startswith("msg_")


@given(body=st.binary(max_size=2048))
def test_pynacl_verifies_our_signatures(body: bytes) -> None:
    signature = sign(KEY, MSG_ID, NOW, body).removeprefix("v1a,")
    verify_key = nacl.signing.SigningKey(SEED).verify_key
    signed = f"{MSG_ID}.{NOW}.".encode() + body
    assert verify_key.verify(signed, base64.b64decode(signature)) == signed
    assert bytes(verify_key) == KEY.public().raw


@given(body=st.binary(max_size=2048))
def test_we_verify_pynacls_signatures(body: bytes) -> None:
    theirs = nacl.signing.SigningKey(SEED)
    signature = theirs.sign(f"{MSG_ID}.{NOW}.".encode() + body).signature
    public = PublicKey(bytes(theirs.verify_key))
    wire = headers("v1a," + base64.b64encode(signature).decode())
    assert verify(public, wire, body, now=NOW).msg_id == MSG_ID
    with pytest.raises(SignatureError):
        verify(public, wire, body + b"x", now=NOW)


def test_a_webhook_passes_when_any_signature_verifies_with_any_key() -> None:
    secret = Secret.parse(new_secret())
    both = sign([secret, KEY], MSG_ID, NOW, BODY)
    assert both.startswith("v1,")
    assert " v1a," in both
    key_sets: list[list[Secret | PublicKey]] = [
        [secret],
        [KEY.public()],
        [secret, KEY.public()],
        [OTHER.public(), secret],
    ]
    for keys in key_sets:
        assert verify(keys, headers(both), BODY, now=NOW).msg_id == MSG_ID
    with pytest.raises(SignatureError, match="no valid v1a signature"):
        verify(OTHER.public(), headers(both), BODY, now=NOW)
    with pytest.raises(SignatureError, match="no valid v1 or v1a signature"):
        verify([Secret.parse(new_secret()), OTHER.public()], headers(both), BODY, now=NOW)
    # A v1 secret never accepts a v1a entry, nor a public key a v1 one.
    v1a_only = sign(KEY, MSG_ID, NOW, BODY)
    with pytest.raises(SignatureError):
        verify(secret, headers(v1a_only), BODY, now=NOW)
    assert signed_headers([KEY], MSG_ID, NOW, BODY)["webhook-signature"] == v1a_only


def test_a_header_packed_with_forged_v1a_entries_costs_two_checks_at_most() -> None:
    """Each Ed25519 check costs some 90 µs: only the first MAX_V1A_SIGNATURES v1a entries
    (and the first MAX_SIGNATURES entries in all) are looked at, so a header of forged
    entries costs no more than a genuine webhook; a genuine sender sends one per key."""
    genuine = sign(KEY, MSG_ID, NOW, BODY)
    forged = sign(OTHER, MSG_ID, NOW, BODY)
    assert verify(KEY.public(), headers(f"{forged} {genuine}"), BODY, now=NOW)
    with pytest.raises(SignatureError):
        verify(KEY.public(), headers(f"{forged} {forged} {genuine}"), BODY, now=NOW)
    checked = 0
    real_verifies = PublicKey.verifies

    def counting(self: PublicKey, signature: bytes, data: bytes) -> bool:
        nonlocal checked
        checked += 1
        return real_verifies(self, signature, data)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(PublicKey, "verifies", counting)
        with pytest.raises(SignatureError):
            verify([KEY.public()], headers(" ".join([forged] * 88)), BODY, now=NOW)
    assert checked == MAX_V1A_SIGNATURES


@given(signature=st.text(max_size=200))
def test_any_signature_header_fails_with_signature_error_only(signature: str) -> None:
    """Garbage, truncated, over-long and wrong-length v1a entries are a 401, never a 500."""
    with pytest.raises(SignatureError):
        verify([KEY.public()], headers(signature or "v1a,"), BODY, now=NOW)


@pytest.mark.parametrize(
    "entry",
    [
        "v1a,",
        "v1a,!!!!",
        "v1a," + base64.b64encode(b"x" * 63).decode(),
        "v1a," + base64.b64encode(b"x" * 65).decode(),
        "v1a," + base64.b64encode(b"\0" * 64).decode(),
        "v1a " + sign(KEY, MSG_ID, NOW, BODY).removeprefix("v1a,"),
    ],
)
def test_malformed_v1a_entries_are_refused(entry: str) -> None:
    with pytest.raises(SignatureError):
        verify(KEY.public(), headers(entry), BODY, now=NOW)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("whsec_" + base64.b64encode(SEED).decode(), "must start with 'whsk_'"),
        ("whsk_not base64!", "not valid base64"),
        ("whsk_" + base64.b64encode(b"short").decode(), "must hold 32 bytes, not 5"),
    ],
)
def test_private_key_errors_name_the_problem_not_the_value(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment) as caught:
        SigningKey.parse(text)
    assert base64.b64encode(SEED).decode() not in str(caught.value)


def test_keys_read_back_and_a_private_key_never_shows() -> None:
    assert SigningKey.parse(KEY.text() + "\n") == KEY
    assert PublicKey.parse(str(KEY.public())) == KEY.public()
    assert str(KEY.public()).startswith("whpk_")
    encoded = base64.b64encode(SEED).decode()
    for shown in (repr(KEY), str(KEY), f"{KEY!r}"):
        assert encoded not in shown
        assert encoded[:8] not in shown
    with pytest.raises(ValueError, match="must start with 'whpk_'"):
        PublicKey.parse(KEY.text())


def test_keygen_writes_a_private_file_and_prints_its_public_key(tmp_path: Path) -> None:
    target = tmp_path / "upstream.key"
    made = mirrorhook("keygen", "-o", target)
    public = made.stdout.strip()
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert str(SigningKey.parse(target.read_text()).public()) == public
    assert target.read_text().strip() not in made.stdout + made.stderr
    assert mirrorhook("keygen", "--public", target).stdout.strip() == public
    again = mirrorhook("keygen", "-o", target)
    assert again.returncode == 1
    assert "exists: not overwritten" in again.stderr
    assert str(SigningKey.parse(target.read_text()).public()) == public
    target.chmod(0o644)
    refused = mirrorhook("keygen", "--public", target)
    assert refused.returncode == 1
    assert "world-readable" in refused.stderr
    piped = mirrorhook("keygen")
    assert piped.stderr.startswith("public key: whpk_")
    assert str(SigningKey.parse(piped.stdout).public()) in piped.stderr


def test_a_receiver_may_verify_with_a_public_key_alone(tmp_path: Path) -> None:
    _private, public = key_pair(tmp_path, "upstream")
    path = receiver_toml(tmp_path, upstream="rsync://h/m/", secret_file=None)
    path.write_text(path.read_text() + f'public_key_file = "{public}"\n')
    receiver = load_config(path).receiver
    assert receiver is not None
    assert receiver.secret is None
    assert receiver.keys == (PublicKey.parse(public.read_text()),)
    # Two keys while the upstream moves to a new one: either verifies.
    public.write_text(f"# the current key\n{public.read_text()}\n{OTHER.public()}\n")
    receiver = load_config(path).receiver
    assert receiver is not None
    signed = headers(sign(OTHER, MSG_ID, NOW, BODY))
    assert verify(receiver.keys, signed, BODY, now=NOW).scheme == "v1a"


def test_a_receiver_needs_a_secret_or_a_public_key(tmp_path: Path) -> None:
    path = receiver_toml(tmp_path, upstream="rsync://h/m/", secret_file=None)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    (problem,) = caught.value.problems
    assert problem.startswith(f"{path}: receiver.secret_file: missing: set secret_file")


@pytest.mark.parametrize(
    ("content", "mode", "fragment"),
    [
        ("whpk_AAAA\n", 0o644, "must hold 32 bytes, not 3"),
        ("whsk_" + base64.b64encode(SEED).decode(), 0o644, "holds a private key: keep it on"),
        ("# nothing yet\n\n", 0o644, "holds no public key (a whpk_... line)"),
        (f"{KEY.public()}\n" * 5, 0o644, "holds 5 keys; at most 4"),
        (f"{KEY.public()}\nwhpk_AAAA\n", 0o644, "key 2: public key must hold 32 bytes"),
        (str(KEY.public()), 0o664, "is writable by others than its owner: chmod 644"),
    ],
)
def test_a_bad_public_key_file_is_one_line_naming_file_and_key(
    tmp_path: Path, content: str, mode: int, fragment: str
) -> None:
    public = tmp_path / "upstream.pub"
    public.write_text(content)
    public.chmod(mode)
    path = receiver_toml(tmp_path, upstream="rsync://h/m/")
    path.write_text(path.read_text() + f'public_key_file = "{public}"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    (problem,) = caught.value.problems
    assert problem.startswith(f"{path}: receiver.public_key_file: public key file {public}")
    assert fragment in problem


def test_the_host_level_public_key_is_every_repositorys(tmp_path: Path) -> None:
    _private, public = key_pair(tmp_path, "upstream")
    write_secret(tmp_path / "b.secret")
    path = tmp_path / "host.toml"
    path.write_text(
        "[receiver]\n"
        'listen = ["127.0.0.1:9"]\n'
        f'state_dir = "{tmp_path / "state"}"\n'
        f'public_key_file = "{public}"\n'
        "[receiver.repos.a]\n"
        'upstream = "rsync://h/a/"\n'
        f'target = "{tmp_path / "a"}"\n'
        "[receiver.repos.b]\n"
        'upstream = "rsync://h/b/"\n'
        f'target = "{tmp_path / "b"}"\n'
        f'secret_file = "{tmp_path / "b.secret"}"\n'
    )
    host = load_config(path).receivers
    assert host is not None
    key = PublicKey.parse(public.read_text())
    assert [len(repo.keys) for repo in host.repos] == [1, 2]
    assert all(repo.public_keys == (key,) for repo in host.repos)


def test_with_a_signing_key_a_mirror_needs_no_secret(tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    private, _public = key_pair(tmp_path, "upstream")
    path = publisher_toml(tmp_path, root=tmp_path / "repo", mirrors=[("m", "http://m.example/")])
    without_secret = "\n".join(
        line for line in path.read_text().splitlines() if not line.startswith("secret_file")
    )
    path.write_text(without_secret + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "mirrors[0].secret_file: required key is missing (or set [publisher]" in str(
        caught.value
    )
    path.write_text(
        without_secret.replace("[publisher]\n", f'[publisher]\nsigning_key_file = "{private}"\n')
        + "\n"
    )
    publisher = load_config(path).publisher
    assert publisher is not None
    (mirror,) = publisher.mirrors
    assert mirror.secret is None
    assert mirror.signers == (SigningKey.parse(private.read_text()),)


def test_a_key_file_that_is_a_fifo_or_huge_is_refused_at_once(tmp_path: Path) -> None:
    """Opened without blocking and read up to a bound: a FIFO planted as a key file must not
    hang the config's loading, nor a huge file fill memory."""
    fifo = tmp_path / "upstream.pub"
    os.mkfifo(fifo)
    path = receiver_toml(tmp_path, upstream="rsync://h/m/")
    path.write_text(path.read_text() + f'public_key_file = "{fifo}"\n')
    with fifo_released_after(fifo, 5) as released, pytest.raises(ConfigError) as caught:
        load_config(path)  # a blocking open would be released (and fail below), not hang
    assert "is not a regular file" in str(caught.value)
    assert not released.is_set()
    fifo.unlink()
    fifo.write_text(f"{KEY.public()}\n" + "#" * 5000)
    with pytest.raises(ConfigError, match="is larger than 4096 bytes: not a key file"):
        load_config(path)
