"""Where backups go, and how files get there: safe names, atomic writes, manifests.

Layout: ``<dest>/<pool>/<vm-name>--<vm-uuid>/<UTC stamp>-<run>.xva`` (or
``.metadata.xva`` for sr-copy) with ``<UTC stamp>-<run>.json`` beside it; the
run id keeps two jobs started in the same second from sharing a file.  Names are
made safe for paths, and every path is checked to stay inside the
destination: a VM called ``../../etc`` never escapes it.  Only a file with a
manifest is a backup; the manifest is written last.
"""
from __future__ import annotations

import json
import os
import re
import unicodedata

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_NAME = 80


class UnsafePath(ValueError):
    pass


def safe_name(name: str, fallback: str = "vm") -> str:
    text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    text = _UNSAFE.sub("_", text).strip("._-")
    return text[:MAX_NAME] or fallback


def vm_dir(dest: str, pool: str, vm_name: str, vm_uuid: str) -> str:
    path = os.path.join(dest, safe_name(pool, "pool"), f"{safe_name(vm_name)}--{safe_name(vm_uuid, 'uuid')}")
    return inside(dest, path)


def inside(dest: str, path: str) -> str:
    root, full = os.path.realpath(dest), os.path.realpath(path)
    if os.path.commonpath([root, full]) != root:
        raise UnsafePath(f"{path} is outside the destination {dest}")
    return full


def backup_paths(ctx: dict, dest: str) -> dict[str, str]:
    folder = vm_dir(dest, ctx["pool"], ctx["vm"]["name"], ctx["vm"]["uuid"])
    base = os.path.join(folder, f"{ctx['stamp']}-{ctx['run']}")
    suffix = ".xva" if ctx["mode"] == "export" else ".metadata.xva"
    return {"dir": folder, "data": base + suffix, "manifest": base + ".json"}


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: str, payload: dict) -> None:
    tmp = path + ".partial"
    with open(tmp, "w") as fh:
        json.dump(payload, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path))


def read_manifest(path: str) -> dict | None:
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def remove_quietly(*paths: str) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
