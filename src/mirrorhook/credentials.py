"""The commands that make keys: ``mirrorhook secret`` (a shared ``v1`` secret) and
``mirrorhook keygen`` (the upstream's Ed25519 key pair for ``v1a``; docs/design.md#signatures).

A private key is written to a new file only this user can read, never over an existing
one; what goes to the terminal is the public key, or the key the user asked to be piped.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from mirrorhook import signing
from mirrorhook.checks import read_key_file
from mirrorhook.errors import MirrorhookError
from mirrorhook.keys import SigningKey

_Subparsers = argparse._SubParsersAction  # argparse exposes no public name for it


def add_parsers(subparsers: _Subparsers[Any], verbose: argparse.ArgumentParser) -> None:
    """Add ``secret`` and ``keygen`` to the command line (``verbose``: their ``-v``; they
    read no config, so they take no ``-c``)."""
    parser = subparsers.add_parser(
        "secret",
        parents=[verbose],
        help="print a new random webhook secret",
        description=(
            "Print a new secret (whsec_ + base64 of 32 random bytes). Store it in a file only "
            "mirrorhook can read, on the mirror (receiver.secret_file) and on the upstream "
            "(publisher.mirrors.secret_file): umask 077; mirrorhook secret > mirror-a.secret"
        ),
    )
    parser.set_defaults(func=run_secret)
    parser = subparsers.add_parser(
        "keygen",
        parents=[verbose],
        help="make the upstream's Ed25519 key pair (v1a signatures), or show a public key",
        description=(
            "Make a new Ed25519 key pair for v1a signatures. With -o FILE, write the private "
            "key (whsk_ + base64 of the 32-byte seed) to FILE, a new file of mode 600 (an "
            "existing one is never overwritten), and print the public key (whpk_ + base64 of "
            "32 bytes): the upstream sets publisher.signing_key_file = FILE and publishes "
            "the public key; each mirror puts it in a file named by its public_key_file. "
            "Without -o, print the private key on stdout (umask 077; mirrorhook keygen > "
            "FILE) and the public key on stderr. With --public FILE, print the public key "
            "of an existing private key."
        ),
    )
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("-o", "--output", metavar="FILE", help="write the private key to FILE")
    choice.add_argument(
        "--public", metavar="FILE", help="print the public key of the private key in FILE"
    )
    parser.set_defaults(func=run_keygen)


def run_secret(_args: argparse.Namespace) -> int:
    sys.stdout.write(signing.new_secret() + "\n")
    return 0


def run_keygen(args: argparse.Namespace) -> int:
    if args.public is not None:
        sys.stdout.write(f"{read_private_key(Path(args.public)).public()}\n")
        return 0
    key = SigningKey.generate()
    if args.output is None:
        sys.stdout.write(key.text() + "\n")
        sys.stderr.write(f"public key: {key.public()}\n")
        return 0
    write_private_key(Path(args.output), key)
    sys.stdout.write(f"{key.public()}\n")
    return 0


def read_private_key(path: Path) -> SigningKey:
    """The key in ``path``, checked as the config checks ``signing_key_file``."""
    try:
        return read_key_file(path, "private key file", SigningKey.parse, private=True)
    except ValueError as err:
        raise MirrorhookError(str(err)) from None


def write_private_key(path: Path, key: SigningKey) -> None:
    """Write ``key`` to the new file ``path``, mode 600, durably; never over another file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise MirrorhookError(
            f"{path} exists: not overwritten (a new key needs a new file, or remove it first)"
        ) from None
    except OSError as err:
        raise MirrorhookError(f"cannot create {path}: {err.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="ascii") as file:
            os.fchmod(file.fileno(), 0o600)  # whatever the umask
            file.write(key.text() + "\n")
            file.flush()
            os.fsync(file.fileno())
    except OSError as err:
        path.unlink(missing_ok=True)
        raise MirrorhookError(f"cannot write {path}: {err.strerror}") from None
