"""Passwords read from files: a named password file, or a name in a secrets directory.

A secrets directory is how Docker (``/run/secrets``) and systemd
(``$CREDENTIALS_DIRECTORY``, from ``LoadCredential=``) hand secrets to a
service.  Every file is read when it is needed, never cached, so a rotated
secret is used at the next login; a file others can read is refused, and so is
a directory anyone can write to (a secret there could be swapped).

A POSIX ACL is read where there is one: systemd gives the service's user read
access to a root-owned 0400 credential with an ACL entry, and ``stat`` then
shows the ACL's mask in the group bits (mode 0440) although no group can read.
"""
from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

_ACL_XATTR = "system.posix_acl_access"
#: ACL entry tags (linux/posix_acl.h); an entry is <tag u16, perm u16, id u32> after a 4-byte header
_USER, _GROUP_OBJ, _GROUP, _MASK = 0x02, 0x04, 0x08, 0x10


class SecretError(Exception):
    """A secret that cannot be used; the message says why and how to fix it (never the secret)."""


def read_password_file(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise SecretError(f"cannot read password file {path}: {exc.strerror}") from None
    acl = _acl(path)
    if st.st_mode & stat.S_IRWXO or (acl is None and st.st_mode & stat.S_IRWXG):
        raise SecretError(f"password file {path} is readable by others "
                          f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}")
    who = _others_in_acl(acl or [])
    if who:
        raise SecretError(f"password file {path} is readable by others ({who} in its ACL); "
                          f"run: setfacl -b {path} && chmod 600 {path}")
    try:
        value = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:  # a directory, unreadable, or not text
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise SecretError(f"cannot read password file {path}: {reason}") from None
    if not value:
        raise SecretError(f"password file {path} is empty")
    return value


def _acl(path: str) -> list[tuple[int, int, int]] | None:
    """The file's ACL entries (tag, perm, id), or None without an ACL (or ACL support)."""
    try:
        raw = os.getxattr(path, _ACL_XATTR)
    except (OSError, AttributeError):
        return None
    return [struct.unpack_from("<HHI", raw, offset) for offset in range(4, len(raw) - 7, 8)] or None


def _others_in_acl(entries: list[tuple[int, int, int]]) -> str:
    """Who besides the owner and this process's user the ACL lets in ("" for nobody)."""
    mask = next((perm for tag, perm, _ in entries if tag == _MASK), 0o7)
    for tag, perm, ident in entries:
        if not perm & mask:
            continue
        if tag in (_GROUP_OBJ, _GROUP):
            return "a group" if tag == _GROUP_OBJ else f"group {ident}"
        if tag == _USER and ident != os.geteuid():
            return f"user {ident}"
    return ""


def read_secret(directory: str, name: str, origin: str) -> str:
    """The secret ``name`` in ``directory`` (chosen by ``origin``, for messages)."""
    where = f"secrets directory {directory} (from {origin})"
    try:
        st = os.stat(directory)
    except OSError as exc:
        raise SecretError(f"cannot use {where}: {exc.strerror} — create it (mode 0700), or set secrets_dir "
                          "or TINABS_SECRETS_DIR to where the secrets are") from None
    if not stat.S_ISDIR(st.st_mode):
        raise SecretError(f"{where} is not a directory; set secrets_dir or TINABS_SECRETS_DIR")
    if st.st_mode & stat.S_IWOTH:
        raise SecretError(f"{where} is writable by everyone (mode {stat.S_IMODE(st.st_mode):04o}); "
                          f"run: chmod o-w {directory}")
    path = os.path.join(directory, name)
    real_dir, real = os.path.realpath(directory), os.path.realpath(path)
    if os.path.commonpath([real_dir, real]) != real_dir:  # a link out (Kubernetes' links stay inside)
        raise SecretError(f"secret `{name}` in {directory} links to {real}, outside the directory; "
                          "put the secret itself in the directory")
    if not os.path.lexists(path):
        raise SecretError(f"no secret `{name}` in {where}; create {path} (mode 0600) or fix password_secret")
    return read_password_file(path)
