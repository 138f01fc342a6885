"""The sealed format of everything the repository stores (blocks and indexes alike).

A sealed object is a header, then the payload::

    magic  b"TNBR"          4 bytes
    version 1               1 byte
    flags                   1 byte: 1 = zstd-compressed, 2 = AES-256-GCM, 4 = SHA-256 trailer
    reserved 0              2 bytes
    [nonce                  12 random bytes, when encrypted]
    payload                 the (compressed) plaintext; encrypted: ciphertext + 16-byte GCM tag
    [sha256                 32 bytes over header, aad and payload, when not encrypted and asked]

The plaintext is compressed with zstd unless that does not make it smaller (then it is kept
raw, flag 1 clear).  Encryption authenticates the header and the caller's associated data
(a block's id, an index's name) with the payload: a block copied under another name, or a flag
flipped, fails authentication.  A random 96-bit nonce per object is safe for far more objects
than a repository holds (the collision bound is ~2^32 objects per key).
"""
from __future__ import annotations

import hashlib
import hmac
import os
import struct
import threading

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"TNBR"
VERSION = 1
HEADER = struct.Struct(">4sBBH")
FLAG_ZSTD, FLAG_AES_GCM, FLAG_SHA256 = 1, 2, 4
NONCE_BYTES, TAG_BYTES, SHA_BYTES = 12, 16, 32
#: the most a sealed object may decompress to: a bound against a forged zstd frame (indexes of
#: very large VMs are a few MiB; blocks 1 MiB)
MAX_PLAINTEXT = 1 << 30


class SealError(Exception):
    """Sealed bytes that do not open; the message says which check failed (the caller names what)."""


class Codec:
    """Seals and opens with one configuration: ``compression`` "zstd" or "none", a zstd ``level``,
    and an AES-256 key (None: not encrypted)."""

    def __init__(self, compression: str, level: int, encryption_key: bytes | None):
        self.compression = compression
        self.level = level
        self._aead = AESGCM(encryption_key) if encryption_key is not None else None
        self._local = threading.local()  # zstd contexts are not for concurrent use

    @property
    def encrypted(self) -> bool:
        return self._aead is not None

    def _compressor(self) -> zstandard.ZstdCompressor:
        compressor = getattr(self._local, "compressor", None)
        if compressor is None:
            compressor = self._local.compressor = zstandard.ZstdCompressor(level=self.level)
        return compressor

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        decompressor = getattr(self._local, "decompressor", None)
        if decompressor is None:
            decompressor = self._local.decompressor = zstandard.ZstdDecompressor()
        return decompressor

    def seal(self, plaintext: bytes, aad: bytes, *, checksum: bool = True) -> bytes:
        """``plaintext`` sealed; ``checksum`` adds a SHA-256 trailer when not encrypted (a block
        needs none: its id is its hash, re-checked on read)."""
        payload, flags = plaintext, 0
        if self.compression == "zstd":
            packed = self._compressor().compress(plaintext)
            if len(packed) < len(plaintext):
                payload, flags = packed, FLAG_ZSTD
        if self._aead is not None:
            flags |= FLAG_AES_GCM
            header = HEADER.pack(MAGIC, VERSION, flags, 0)
            nonce = os.urandom(NONCE_BYTES)
            return header + nonce + self._aead.encrypt(nonce, payload, header + aad)
        if checksum:
            flags |= FLAG_SHA256
        header = HEADER.pack(MAGIC, VERSION, flags, 0)
        trailer = hashlib.sha256(header + aad + payload).digest() if checksum else b""
        return header + payload + trailer

    def open(self, sealed: bytes, aad: bytes) -> bytes:
        """The plaintext of ``sealed``; SealError if it is not whole, authentic and well-formed."""
        if len(sealed) < HEADER.size:
            raise SealError(f"too short ({len(sealed)} bytes) to be sealed data")
        header = bytes(sealed[:HEADER.size])
        magic, version, flags, _ = HEADER.unpack(header)
        if magic != MAGIC:
            raise SealError("not sealed data (bad magic)")
        if version != VERSION:
            raise SealError(f"format version {version}, this tinabs reads {VERSION}: upgrade tinabs")
        body = memoryview(sealed)[HEADER.size:]  # slices of it are views: a block is not copied to be opened
        if flags & FLAG_AES_GCM:
            if self._aead is None:
                raise SealError("encrypted, but the repository is configured without encryption")
            if len(body) < NONCE_BYTES + TAG_BYTES:
                raise SealError("truncated")
            try:
                payload = self._aead.decrypt(body[:NONCE_BYTES], body[NONCE_BYTES:], header + aad)
            except InvalidTag:
                raise SealError("failed authentication (damaged, truncated, or stored under another name)") from None
        else:
            if self._aead is not None:
                raise SealError("not encrypted, but the repository is: refusing unauthenticated data")
            payload = body
            if flags & FLAG_SHA256:
                payload, trailer = body[:-SHA_BYTES], body[-SHA_BYTES:]
                if len(body) < SHA_BYTES or not hmac.compare_digest(
                        trailer, hashlib.sha256(header + aad + payload).digest()):
                    raise SealError("checksum mismatch (damaged or truncated)")
        if flags & FLAG_ZSTD:
            try:
                return self._decompressor().decompress(payload, max_output_size=MAX_PLAINTEXT)
            except zstandard.ZstdError as exc:
                raise SealError(f"does not decompress ({exc})") from None
        return bytes(payload)
