"""What the tar headers of an XVA may hold, checked without reading member data.

An XVA (FACTS.md §7) holds only regular files: ``ova.xml`` first, then
``Ref:N/NNNNNNNN`` chunks, each followed by its ``.xxhash`` (or legacy
``.checksum``).  Links, devices, FIFOs, directories, GNU or pax extension
headers, absolute names and names with ``..`` are never in one: a tool that
extracted them could write or read outside its directory.  ``verify`` applies
``member_problem`` to every member as it streams the file; a restore runs
``header_problems`` first, which seeks from header to header and so takes a
moment even for a large backup.
"""
from __future__ import annotations

import os
import re
import tarfile

from tinabs_tasks.storage import destination

BLOCK = 512
MAX_PROBLEMS = 50
_ZERO_BLOCK = bytes(BLOCK)
# ASCII digits only (Python's \d also takes "０", U+FF10) and no trailing newline ($ allows one):
# names xapi would never write nor accept
CHUNK_NAME = re.compile(r"^(Ref:\d+)/(\d{8})\Z", re.ASCII)
SUM_NAME = re.compile(r"^(Ref:\d+)/(\d{8})\.(xxhash|checksum)\Z", re.ASCII)
#: what tar member types are, for messages
_TAR_KINDS = {tarfile.SYMTYPE: "a symlink", tarfile.LNKTYPE: "a hard link", tarfile.CHRTYPE: "a character device",
              tarfile.BLKTYPE: "a block device", tarfile.DIRTYPE: "a directory", tarfile.FIFOTYPE: "a FIFO",
              tarfile.CONTTYPE: "a contiguous file", tarfile.GNUTYPE_LONGNAME: "a GNU long-name header",
              tarfile.GNUTYPE_LONGLINK: "a GNU long-link header", tarfile.GNUTYPE_SPARSE: "a GNU sparse file",
              tarfile.XHDTYPE: "a pax header", tarfile.XGLTYPE: "a pax global header"}


def tar_header(block: bytes) -> tarfile.TarInfo:
    """The member a 512-byte tar header describes (names not UTF-8 kept as surrogates);
    tarfile.HeaderError when it is none."""
    return tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")


def member_problem(info: tarfile.TarInfo) -> str | None:
    """Why a member may not be in an XVA at all (its type or its name), or None."""
    name = info.name
    if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
        kind = _TAR_KINDS.get(info.type, f"tar type {info.type!r}")
        target = f" to {info.linkname!r}" if info.type in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
        return f"member {name!r} is {kind}{target}, not a regular file (tar type {info.type!r})"
    if name.startswith("/"):
        return f"member name {name!r} is absolute"
    if ".." in name.replace("\\", "/").split("/"):
        return f"member name {name!r} escapes"
    return None


def header_problems(path: str) -> list[str]:
    """What is wrong with the tar headers of the XVA at ``path``, as verify says it: member types
    and names that are unsafe or that no XVA holds, ova.xml not first or twice, a broken
    structure.  Member data is never read (the walk seeks past it)."""
    problems: list[str] = []
    with destination.open_regular(path) as fh:
        first, ova_seen = True, False
        while len(problems) < MAX_PROBLEMS:
            at = fh.tell()
            block = fh.read(BLOCK)
            if len(block) < BLOCK:
                problems.append(f"file is truncated: no end-of-archive blocks after {at} bytes")
                break
            if block == _ZERO_BLOCK:
                break
            try:
                info = tar_header(block)
            except tarfile.HeaderError as exc:
                problems.append(f"bad tar header at byte {at}: {exc}")
                break
            problem = _header_problem(info, first, ova_seen)
            if problem:
                problems.append(problem)
            first, ova_seen = False, ova_seen or info.name == "ova.xml"
            fh.seek(info.size + (-info.size % BLOCK), os.SEEK_CUR)
    return problems


def _header_problem(info: tarfile.TarInfo, first: bool, ova_seen: bool) -> str | None:
    name = info.name
    if first and name != "ova.xml":
        return f"ova.xml is not the first member (found {name!r})"
    unsafe = member_problem(info)
    if unsafe:
        return unsafe
    if name == "ova.xml":
        return "ova.xml appears twice" if ova_seen else None
    if not (CHUNK_NAME.match(name) or SUM_NAME.match(name)):
        return f"unexpected member {name!r}"
    return None
