"""VDI changed block tracking messages: enable_cbt, disable_cbt, list_changed_blocks, data_destroy.

The checks and their order follow xapi_vdi.ml ``check_operation_error`` (attach,
SM feature VDI_CONFIG_CBT, cbt_metadata type, then the operation's own rules)
and the implementations ``change_cbt_status``, ``list_changed_blocks`` and
``_data_destroy``; the bitmaps come from :mod:`..cbt`.
"""
from __future__ import annotations

import time

from tinabs_tasks.sim import cbt
from tinabs_tasks.sim.errors import XapiError
from tinabs_tasks.sim.ops import Ctx, op
from tinabs_tasks.sim.ops.construct import require
from tinabs_tasks.sim.ops.storage import empty_content, refresh_sr

#: xapi_vdi.ml ``data_destroy = _data_destroy ~timeout:4.0``: how long it waits for VBDs to go
DATA_DESTROY_WAIT_S = 4.0
#: SR types whose SM driver has no VDI_CONFIG_CBT feature (FileSR and LVHDSR have it)
_NO_CBT_SR_TYPES = ("iso", "udev")


def _vdi(ctx: Ctx, vdi) -> dict:
    return ctx.store.record("VDI", require(ctx.store, "VDI", vdi))


def _assert_sm_supports_cbt(ctx: Ctx, rec: dict) -> None:
    """check_sm_feature_error: the CBT operations need the SR's VDI_CONFIG_CBT feature."""
    if ctx.store.get("SR", rec["SR"], "type") in _NO_CBT_SR_TYPES:
        raise XapiError("SR_OPERATION_NOT_SUPPORTED", rec["SR"])


def _active_vbds(ctx: Ctx, rec: dict) -> list[dict]:
    vbds = (ctx.store.record("VBD", v) for v in rec["VBDs"])
    return [v for v in vbds if v.get("currently_attached") or v.get("reserved")]


def _assert_cbt_can_change(ctx: Ctx, vdi: str, rec: dict) -> None:
    """check_operation_error for `enable_cbt | `disable_cbt (both may run live)."""
    _assert_sm_supports_cbt(ctx, rec)
    cbt.assert_has_data(ctx.pool, vdi)
    if rec["is_a_snapshot"]:
        raise XapiError("OPERATION_NOT_ALLOWED", f"VDI is a snapshot: {vdi}")
    if rec["type"] not in ("user", "system"):
        raise XapiError("VDI_INCOMPATIBLE_TYPE", vdi, rec["type"])
    if rec.get("on_boot") == "reset":
        raise XapiError("VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION")


@op("VDI.enable_cbt")
def enable_cbt(ctx: Ctx, self):
    rec = _vdi(ctx, self)
    _assert_cbt_can_change(ctx, self, rec)
    with ctx.store.lock:  # change_cbt_status: nothing to do when it is already on
        if not ctx.store.get("VDI", self, "cbt_enabled"):
            cbt.tracker(ctx.pool).enable(self)
            ctx.store.set("VDI", self, "cbt_enabled", True)
    return ""


@op("VDI.disable_cbt")
def disable_cbt(ctx: Ctx, self):
    rec = _vdi(ctx, self)
    _assert_cbt_can_change(ctx, self, rec)
    with ctx.store.lock:
        if ctx.store.get("VDI", self, "cbt_enabled"):
            cbt.tracker(ctx.pool).disable(self)
            ctx.store.set("VDI", self, "cbt_enabled", False)
    return ""


@op("VDI.list_changed_blocks")
def list_changed_blocks(ctx: Ctx, vdi_from, vdi_to):
    source = _vdi(ctx, vdi_from)
    target = _vdi(ctx, vdi_to)
    # vdi_to may not be attached, except to a VM snapshot (VM.checkpoint leaves those attached)
    if any(not ctx.store.get("VM", v["VM"], "is_a_snapshot") for v in _active_vbds(ctx, target)
           if ctx.store.exists("VM", v["VM"])):
        raise XapiError("VDI_IN_USE", vdi_to, "list_changed_blocks")
    _assert_sm_supports_cbt(ctx, target)
    if source["SR"] != target["SR"]:  # raised bare, outside transform_storage_exn: exnHelper's catch-all
        raise XapiError("INTERNAL_ERROR", f'Storage_interface.Vdis_on_different_srs("{vdi_from}", "{vdi_to}")')
    return cbt.tracker(ctx.pool).changed_blocks(vdi_from, vdi_to)


@op("VDI.data_destroy")
def data_destroy(ctx: Ctx, self):
    rec = _vdi(ctx, self)
    _assert_sm_supports_cbt(ctx, rec)
    if not rec["is_a_snapshot"]:
        raise XapiError("OPERATION_NOT_ALLOWED", f"VDI is not a snapshot: {self}")
    if not rec["cbt_enabled"]:
        raise XapiError("VDI_NO_CBT_METADATA", self)
    if rec["type"] == "cbt_metadata":
        return ""  # already done
    # the type changes first, so no new VBD takes the VDI while its VBDs are awaited
    ctx.store.set("VDI", self, "type", "cbt_metadata")
    deadline = time.monotonic() + DATA_DESTROY_WAIT_S
    while ctx.store.get("VDI", self, "VBDs") and time.monotonic() < deadline:
        time.sleep(0.05)
    with ctx.store.lock:
        if ctx.store.get("VDI", self, "VBDs"):
            ctx.store.set("VDI", self, "type", rec["type"])
            raise XapiError("VDI_IN_USE", self, "data_destroy")
        # SM deletes the data and keeps the cbtlog: the VDI stays usable as a vdi_from
        ctx.pool.disks[self] = empty_content(rec["virtual_size"])
        ctx.store.set("VDI", self, "physical_utilisation", 0)
        refresh_sr(ctx, rec["SR"])
    return ""
