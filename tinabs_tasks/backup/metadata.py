"""Stage 6 (sr-copy mode): save the backup VM's metadata (``/export_metadata``).

Creates: ``<stamp>.metadata.xva`` (ova.xml only, pointing at the copy on the
backup SR) and its manifest, which records the copied VDI's uuid and size.
Earlier attempt: a manifest for this run means done.  Streams to a partial
file, checked against Content-Length, fsynced and renamed.
Undone by: compensation removes the partial or unmanifested file.
"""
from __future__ import annotations

import time

from tinabs_tasks.storage import destination
from tinabs_tasks.storage import manifest
from tinabs_tasks.backup.export import assert_writable, download


def run(env, ctx: dict) -> dict:
    xapi, report, slots, dest = env.xapi, env.report, env.slots, env.destination
    paths = destination.backup_paths(ctx, dest)
    earlier = manifest.earlier_result(ctx, paths)
    if earlier:
        ctx["result"] = earlier
        return ctx
    assert_writable(dest)
    x = xapi.x
    copy = ctx["refs"]["system_copy"]
    began = time.time()
    with slots.hold(ctx["run"], "metadata", park=("metadata", ctx)) as beat:
        size, digest = download(xapi, "/export_metadata",
                                {"ref": ctx["refs"]["backup_vm"], "export_snapshots": "false"},
                                paths, report, beat, run=ctx["run"])
    sr = x.VDI.get_SR(copy)
    extra = {"backup_sr": {"uuid": x.SR.get_uuid(sr), "name": x.SR.get_name_label(sr)},
             "copied_vdis": [{"uuid": x.VDI.get_uuid(copy), "userdevice": "0",
                              "virtual_size": int(x.VDI.get_virtual_size(copy))}],
             **manifest.kind_fields(ctx.get("kind", {}))}
    manifest.write(ctx, paths, size=size, sha256=digest, transfer_s=time.time() - began, xapi=xapi, extra=extra)
    ctx["result"] = {"path": paths["data"], "manifest": paths["manifest"], "size": size, "sha256": digest,
                     **{k: extra[k] for k in manifest.KIND_FIELDS if extra.get(k) is not None}}
    return ctx
