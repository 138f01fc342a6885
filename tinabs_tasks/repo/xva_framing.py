"""The bytes of an XVA that are not disk data: tar headers and checksum texts, kept compactly.

A backup index must let ``xva_rebuild`` give back the pool's stream byte for
byte, but storing every 512-byte tar header would cost a kilobyte per MiB of
disk.  Nearly every header of one export is the same bytes but for the name,
the size and the header checksum, so the index keeps a few *template* headers
(the first header of each shape seen) and, per member, only which template to
patch with the member's name and size (and mtime when it differs).  Patching
keeps each numeric field in the template's own layout (digit count, NUL or
space terminators): tarfile writes the checksum as six digits, NUL, space,
ocaml-tar (xapi) as seven digits and NUL, and this reproduces either.  The
split checks every patched header against the original and keeps the raw
bytes of any header that does not come out identical, so a rebuild can never
differ from what the pool sent.

Checksum members are regenerated from the block (``checksum_text``); the split
keeps the original text only when it verifies but is spelled differently.
"""
from __future__ import annotations

import base64
import hashlib
import re

import xxhash

BLOCK = 512
#: a backup keeps at most this many template headers; further shapes are kept raw
MAX_TEMPLATES = 8
_NAME = slice(0, 100)
_SIZE = (124, 12)
_MTIME = (136, 12)
_CHKSUM = (148, 8)
_OCTAL_FIELD = re.compile(rb"^( *)([0-7]+)([ \0]*)\Z")


# -- checksum members -----------------------------------------------------------------
def checksum_text(kind: str, data) -> bytes:
    """The checksum member xapi writes for chunk ``data``: XXH64 as 16 upper-case hex digits
    (``xxhash``) or the lower-case SHA-1 hex digest (``checksum``, xapi before 2019)."""
    if kind == "xxhash":
        return b"%016X" % xxhash.xxh64_intdigest(data)
    return hashlib.sha1(data).hexdigest().encode()


def checksum_matches(text: bytes, canonical: bytes) -> bool:
    """Whether a checksum member's ``text`` states ``canonical`` (case and surrounding blanks aside,
    as xapi's importer reads it)."""
    return text.strip().lower() == canonical.lower()


# -- tar headers ------------------------------------------------------------------------
def _put_octal(header: bytearray, template: bytes, field: tuple[int, int], value: int) -> bool:
    """Write ``value`` into ``header`` at ``field`` laid out as the template's field is."""
    start, width = field
    match = _OCTAL_FIELD.match(template[start:start + width])
    if not match:
        return False
    digits = len(match.group(2))
    text = b"%0*o" % (digits, value)
    if len(text) != digits:
        return False
    header[start:start + width] = match.group(1) + text + match.group(3)
    return True


def patch(template: bytes, name: str, size: int, mtime: int | None = None) -> bytes | None:
    """The header ``template`` becomes for a member ``name`` of ``size`` bytes (and ``mtime``, when
    given), its checksum recomputed; None when the template cannot hold them."""
    encoded = name.encode("utf-8", "surrogateescape")
    if len(encoded) > 100 or len(template) != BLOCK:
        return None
    header = bytearray(template)
    header[_NAME] = encoded.ljust(100, b"\0")
    if not _put_octal(header, template, _SIZE, size):
        return None
    if mtime is not None and not _put_octal(header, template, _MTIME, mtime):
        return None
    header[_CHKSUM[0]:_CHKSUM[0] + _CHKSUM[1]] = b" " * _CHKSUM[1]
    if not _put_octal(header, template, _CHKSUM, sum(header)):
        return None
    return bytes(header)


class HeaderCodec:
    """Turns headers into compact codes at split time and codes back into headers at rebuild.

    A code is a template number (patch name and size), ``[template, mtime]`` (patch the mtime
    too), or a string: the raw header in base64."""

    def __init__(self, templates: list[bytes] | None = None):
        self.templates: list[bytes] = list(templates or [])
        self._last = 0

    def encode(self, raw: bytes, name: str, size: int, mtime: int):
        """The code of header ``raw`` (checked: ``decode`` gives ``raw`` back)."""
        order = [self._last] + [i for i in range(len(self.templates)) if i != self._last]
        for number in order:
            if number >= len(self.templates):
                continue
            if patch(self.templates[number], name, size) == raw:
                self._last = number
                return number
            if patch(self.templates[number], name, size, mtime) == raw:
                self._last = number
                return [number, mtime]
        if len(self.templates) < MAX_TEMPLATES and patch(raw, name, size) == raw:
            self.templates.append(bytes(raw))
            self._last = len(self.templates) - 1
            return self._last
        return base64.b64encode(raw).decode("ascii")

    def decode(self, code, name: str, size: int) -> bytes:
        """The header a code stands for; ValueError when the code is not one this codec made."""
        if isinstance(code, str):
            raw = base64.b64decode(code, validate=True)
            if len(raw) != BLOCK:
                raise ValueError(f"a raw tar header of {len(raw)} bytes")
            return raw
        number, mtime = (code, None) if isinstance(code, int) else (code[0], code[1])
        if not 0 <= number < len(self.templates):
            raise ValueError(f"template {number} does not exist")
        header = patch(self.templates[number], name, size, mtime)
        if header is None:
            raise ValueError(f"template {number} cannot hold {name!r} ({size} bytes)")
        return header


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)
