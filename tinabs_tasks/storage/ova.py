"""Reading ova.xml, the header of an XVA: its bytes decoded to the struct xapi wrote, shape-checked.

ova.xml (FACTS.md §7.4) is one XML-RPC ``<value>`` with no ``<?xml?>`` nor
envelope: it is wrapped into a methodResponse and decoded with
``xmlrpc.client.loads``, as a task result is (``xapi.port.decode_result``).
What an XVA header must be is then checked: a struct with an ``objects``
array of ``{class, id, snapshot}`` structs.  ``verify`` decodes the member as
it streams the file; a restore reads the first tar member of the file
(``read``).  Both get BadOva, whose message says what is wrong.
"""
from __future__ import annotations

import tarfile
import xmlrpc.client

from tinabs_tasks.storage import destination
from tinabs_tasks.storage import xva_headers

#: more than any VM's ova.xml: a bigger one is not read into memory
MAX_OVA_XML = 64 << 20


class BadOva(ValueError):
    """An ova.xml that is not an XVA header (or a file whose first member is no ova.xml)."""


def decode(data: bytes) -> dict:
    """The struct an ova.xml holds; BadOva ("ova.xml is not parseable: ...") if it holds none."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadOva(f"ova.xml is not parseable: not UTF-8 ({exc})") from None
    if not text.lstrip().startswith("<value>"):
        raise BadOva(f"ova.xml is not parseable: it does not start with <value> ({text[:40]!r})")
    envelope = f"<methodResponse><params><param>{text}</param></params></methodResponse>"
    try:
        (value,), _ = xmlrpc.client.loads(envelope, use_builtin_types=False)
    except Exception as exc:  # expat, ValueError, ...: all mean "not an XML-RPC value"
        raise BadOva(f"ova.xml is not parseable: {exc}") from None
    if not isinstance(value, dict) or not isinstance(value.get("objects"), list) or not all(
            isinstance(o, dict) and isinstance(o.get("snapshot"), dict) and "class" in o and "id" in o
            for o in value["objects"]):
        raise BadOva("ova.xml is not parseable: it is not a struct with an `objects` array of "
                     "{class, id, snapshot}")
    return value


def read(path: str) -> dict:
    """The decoded ova.xml of the XVA (or metadata XVA) at ``path``: its first tar member, which
    must be named ova.xml and be no larger than MAX_OVA_XML.  BadOva names ``path``."""
    with destination.open_regular(path) as fh:
        head = fh.read(xva_headers.BLOCK)
        if len(head) < xva_headers.BLOCK:
            raise BadOva(f"{path}: too short for an XVA")
        try:
            info = xva_headers.tar_header(head)
        except tarfile.HeaderError as exc:
            raise BadOva(f"{path}: the ova.xml tar header is not valid ({exc})") from None
        if info.name != "ova.xml":
            raise BadOva(f"{path}: first member is {info.name!r}, not ova.xml")
        if info.size > MAX_OVA_XML:
            raise BadOva(f"{path}: ova.xml claims {info.size} bytes, too large to be an XVA header")
        data = fh.read(info.size)
    try:
        return decode(data)
    except BadOva as exc:
        raise BadOva(f"{path}: {exc}") from None
