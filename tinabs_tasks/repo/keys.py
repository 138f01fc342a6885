"""The repository key: a 32-byte master key, where it is read from, and the subkeys made from it.

**Losing the key loses every backup.**  Blocks and indexes are encrypted (AES-256-GCM) with a
subkey of it and nothing else can decrypt them: there is no recovery, no back door, no reset.
Keep a copy of the key file somewhere other than the repository (a password manager, a safe).
A key that leaks lets its holder read every backup: the key file is mode 0600, never inline in
the config, and never appears in logs, errors, indexes or file names.

The master key is read from a file (``key_file``, refused if others can read it, as pool
password files are), an environment variable (``key_env``) or the secrets directory
(``key_secret``), as hex (64 digits) or base64 (44 characters).  ``tinabs repo init`` makes one
with ``generate_key_file``.  HKDF-SHA256, salted with the repository's random id, derives
independent subkeys: one names blocks (keyed hashes, so names reveal nothing about content),
one encrypts, one makes the key check that refuses a wrong key before any work.
"""
from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tinabs_tasks.config.secrets import SecretError
from tinabs_tasks.config.sources import SecretRef
from tinabs_tasks.repo.errors import KeyMissing, KeyUnusable

KEY_BYTES = 32
_INFO_BLOCK_ID = b"tinabs-repo v1 block id"
_INFO_ENCRYPTION = b"tinabs-repo v1 encryption"
_INFO_KEY_CHECK = b"tinabs-repo v1 key check"


@dataclass(frozen=True, repr=False)
class SubKeys:
    """Independent 32-byte keys derived from the master key (repr hides them)."""
    block_id: bytes
    encryption: bytes
    key_check: bytes

    def __repr__(self) -> str:
        return "SubKeys(<hidden>)"


def derive_subkeys(master: bytes, salt: bytes) -> SubKeys:
    """The subkeys of ``master`` for the repository whose random id is ``salt``."""
    check_key_length(master)

    def derive(info: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, info=info).derive(master)

    return SubKeys(derive(_INFO_BLOCK_ID), derive(_INFO_ENCRYPTION), derive(_INFO_KEY_CHECK))


def check_key_length(key: bytes) -> None:
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise KeyUnusable(f"a repository key is {KEY_BYTES} bytes; this one is not "
                          "(use the key file `tinabs repo init` wrote)")


def generate_key() -> bytes:
    return os.urandom(KEY_BYTES)


def encode_key(key: bytes, fmt: str = "hex") -> str:
    check_key_length(key)
    if fmt == "hex":
        return key.hex()
    if fmt == "base64":
        return base64.b64encode(key).decode("ascii")
    raise ValueError(f"key format is hex or base64, not {fmt!r}")


def generate_key_file(path: str, fmt: str = "hex") -> bytes:
    """A new random key, written to ``path`` (mode 0600, created: an existing file is never
    overwritten, it may be the only copy of a key); returns the key."""
    key = generate_key()
    text = (encode_key(key, fmt) + "\n").encode("ascii")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyUnusable(f"key file {path} already exists; it may be the only copy of a key: "
                          "choose another path, or move it away yourself") from None
    except OSError as exc:
        raise KeyUnusable(f"cannot create key file {path}: {exc.strerror}") from None
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, text)
        os.fsync(fd)
    finally:
        os.close(fd)
    return key


def parse_key(text: str, origin: str) -> bytes:
    """The 32-byte key written in ``text`` (hex or base64); ``origin`` names where it came from."""
    value = text.strip()
    try:
        if len(value) == 2 * KEY_BYTES:
            key = bytes.fromhex(value)
        else:
            key = base64.b64decode(value, validate=True)
    except (ValueError, binascii.Error):
        key = b""
    if len(key) != KEY_BYTES:
        raise KeyUnusable(f"{origin} does not hold a repository key ({KEY_BYTES} bytes as 64 hex digits "
                          "or 44 base64 characters); use the key file `tinabs repo init` wrote")
    return key


def describe(ref: SecretRef) -> str:
    return {"env": f"environment variable {ref.name}", "file": f"key file {ref.name}",
            "secret": f"secret `{ref.name}` in {ref.secrets_dir}"}[ref.kind]


def load_key(ref: SecretRef | None) -> bytes:
    """The master key from where ``ref`` says ([repository] key_env / key_file / key_secret)."""
    if ref is None:
        raise KeyMissing("the repository is encrypted and no key is configured: set key_file, key_env "
                         "or key_secret in [repository] to the key `tinabs repo init` made")
    try:
        text = ref.read()
    except SecretError as exc:
        raise KeyUnusable(f"repository key: {exc}") from None
    return parse_key(text, describe(ref))


def read_key_file(path: str) -> bytes:
    """The key in ``path`` (refused if others can read it)."""
    return load_key(SecretRef("file", path))
