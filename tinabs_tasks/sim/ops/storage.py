"""VDI and SR messages.  Disk bytes live in ``pool.disks`` (see ..disks)."""
from __future__ import annotations

import random

from tinabs_tasks.sim import cbt
from tinabs_tasks.sim import disk_transfer
from tinabs_tasks.sim.datamodel import NULL_REF
from tinabs_tasks.sim.disks import CHUNK, GrownContent, SeededContent
from tinabs_tasks.sim.errors import XapiError
from tinabs_tasks.sim.tasks import now
from tinabs_tasks.sim.ops import Ctx, op
from tinabs_tasks.sim.ops.construct import ctor_fields, require

_COPIED_FIELDS = ("name_label", "name_description", "type", "sharable", "virtual_size", "other_config",
                  "xenstore_data", "tags", "on_boot", "allow_caching")


def empty_content(size: int) -> SeededContent:
    return SeededContent(seed=0, size=size, density=0.0)


def refresh_sr(ctx: Ctx, sr: str) -> None:
    """physical_utilisation/virtual_allocation from the VDIs (thin SRs count written bytes)."""
    with ctx.store.lock:
        vdis = ctx.store.get("SR", sr, "VDIs")
        virtual = sum(ctx.store.get("VDI", v, "virtual_size") for v in vdis)
        physical = sum(ctx.store.get("VDI", v, "physical_utilisation") for v in vdis)
        ctx.store.update("SR", sr, virtual_allocation=virtual, physical_utilisation=physical)


def _assert_disk_sr(ctx: Ctx, sr: str) -> None:
    """ISO libraries take no new disks (SM has no vdi_create there)."""
    if ctx.store.get("SR", sr, "content_type") == "iso":
        raise XapiError("SR_OPERATION_NOT_SUPPORTED", sr)


def _assert_room(ctx: Ctx, sr: str, needed: int) -> None:
    rec = ctx.store.record("SR", sr)
    free = rec["physical_size"] - rec["physical_utilisation"]
    if needed > free:
        raise XapiError("SR_FULL", needed, free)


def _thin(ctx: Ctx, sr: str) -> bool:
    return ctx.store.get("SR", sr, "type") in ("nfs", "ext", "file", "smb", "iso")


def new_vdi(ctx: Ctx, sr: str, fields: dict, content) -> str:
    used = content.nonzero_bytes() if _thin(ctx, sr) else fields["virtual_size"]
    _assert_room(ctx, sr, used)
    fields = {"managed": True, "missing": False, "location": "", "sm_config": {}, "snapshot_of": NULL_REF,
              "is_a_snapshot": False, **fields, "SR": sr, "physical_utilisation": used}
    with ctx.store.lock:
        ref = ctx.store.create("VDI", fields)
        ctx.store.set("VDI", ref, "location", ctx.store.get("VDI", ref, "uuid"))
        ctx.pool.disks[ref] = content
        refresh_sr(ctx, sr)
    return ref


def _source(ctx: Ctx, vdi) -> dict:
    return ctx.store.record("VDI", require(ctx.store, "VDI", vdi))


def snapshot_vdi(ctx: Ctx, vdi: str) -> str:
    src = _source(ctx, vdi)
    cbt.assert_has_data(ctx.pool, vdi)
    fields = {k: src[k] for k in _COPIED_FIELDS}
    fields.update(read_only=True, is_a_snapshot=True, snapshot_of=vdi, snapshot_time=now())
    snap = new_vdi(ctx, src["SR"], fields, ctx.pool.content(vdi))
    cbt.on_snapshot(ctx.pool, vdi, snap)  # a CBT-enabled VDI's snapshot takes its change log
    return snap


def clone_vdi(ctx: Ctx, vdi: str) -> str:
    src = _source(ctx, vdi)
    cbt.assert_has_data(ctx.pool, vdi)
    fields = {k: src[k] for k in _COPIED_FIELDS}
    fields.update(read_only=False)
    return new_vdi(ctx, src["SR"], fields, ctx.pool.content(vdi))


def update_usage(ctx: Ctx, vdi: str) -> None:
    """A VDI's physical_utilisation after its bytes changed (thin SRs count written bytes)."""
    sr = ctx.store.get("VDI", vdi, "SR")
    used = ctx.pool.content(vdi).nonzero_bytes() if _thin(ctx, sr) else ctx.store.get("VDI", vdi, "virtual_size")
    ctx.store.set("VDI", vdi, "physical_utilisation", used)
    refresh_sr(ctx, sr)


def _must_write_zeroes(ctx: Ctx, sr: str, sm_config: dict) -> bool:
    """sm_fs_ops.ml ``must_write_zeroes_into_new_vdi``: raw LVM volumes are not sparse."""
    rec = ctx.store.record("SR", sr)
    lvm = rec["type"].lower() in ("lvm", "lvmoiscsi", "lvmohba")
    return lvm and (sm_config.get("type") == "raw" or rec["sm_config"].get("use_vhd") != "true")


def copy_vdi(ctx: Ctx, vdi: str, sr: str, into: str | None, base: str | None = None) -> str:
    """xapi_vdi.ml ``copy`` + sm_fs_ops.ml ``copy_vdi`` (a sparse copy): into a new VDI on ``sr``,
    or into the existing ``into`` (``sr`` unused).  Only the chunks that hold data are copied; with
    ``base``, only those that differ between ``base`` and ``vdi`` (all either holds when they share
    no history, as vhd-tool/sparse_dd do).  The copy takes latency_s + bytes / copy_bandwidth."""
    src = _source(ctx, vdi)
    cbt.assert_has_data(ctx.pool, vdi)
    content = ctx.pool.content(vdi)
    if into:
        target = _source(ctx, into)
        if target["read_only"]:
            raise XapiError("VDI_READONLY", into)
        if target["virtual_size"] < src["virtual_size"]:
            raise XapiError("VDI_TOO_SMALL", into, src["virtual_size"])
        if base and _must_write_zeroes(ctx, target["SR"], target["sm_config"]):
            raise XapiError("VDI_NOT_SPARSE", into)
    else:
        require(ctx.store, "SR", sr)
        _assert_disk_sr(ctx, sr)
        _assert_room(ctx, sr, content.nonzero_bytes() if _thin(ctx, sr) else src["virtual_size"])
    base_content = ctx.pool.content(base) if base else None
    chunks = disk_transfer.chunks_to_copy(content, base_content)
    nbytes = sum(content.chunk_length(k) for k in chunks)
    bandwidth = ctx.pool.settings.copy_bandwidth
    ctx.pool.tasks.sleep(ctx.task, ctx.pool.settings.latency_s + (nbytes / bandwidth if bandwidth else 0))
    if into:
        _write_chunks(ctx, into, content, chunks, base_content)
    else:
        fields = {k: src[k] for k in ("name_label", "name_description", "type", "sharable", "virtual_size")}
        fields.update(read_only=False)
        if base_content is None:  # every chunk with data: the copy shares the source's bytes
            into = new_vdi(ctx, sr, fields, content)
        else:  # a delta into a fresh (zero) VDI: only the differing chunks hold data
            into = new_vdi(ctx, sr, fields, empty_content(src["virtual_size"]))
            _write_chunks(ctx, into, content, chunks, None)
    ctx.pool.count_bytes("copied_bytes", nbytes)
    update_usage(ctx, into)
    return into


def _write_chunks(ctx: Ctx, dst: str, content, chunks: list[int], base_content) -> None:
    """``content``'s bytes at ``chunks`` written into ``dst``.  When dst holds exactly what the
    result would be without them (the base's bytes, or zeros for a full copy) it takes the
    source's bytes, shared copy-on-write, and the write observers hear of the chunks copied."""
    pool, current = ctx.pool, ctx.pool.content(dst)
    as_source = current.size == content.size and (
        current is base_content if base_content is not None else next(iter(current.data_chunks()), None) is None)
    if not as_source:
        for k in chunks:
            pool.guest_write(dst, k * CHUNK, content.chunk(k))
        return
    with ctx.store.lock:
        pool.disks[dst] = content
    for k in chunks:
        pool.notify_written(dst, k * CHUNK, content.chunk_length(k))


@op("VDI.snapshot")
def vdi_snapshot(ctx: Ctx, vdi, driver_params):
    _source(ctx, vdi)
    ctx.pool.slow_op(ctx.task)
    return snapshot_vdi(ctx, vdi)


@op("VDI.clone")
def vdi_clone(ctx: Ctx, vdi, driver_params):
    _source(ctx, vdi)
    ctx.pool.slow_op(ctx.task)
    return clone_vdi(ctx, vdi)


@op("VDI.copy")
def vdi_copy(ctx: Ctx, vdi, sr, base_vdi, into_vdi):
    _source(ctx, vdi)
    # xapi_vdi.ml copy: an into_vdi/base_vdi that is not a valid ref counts as none given
    into = into_vdi if ctx.store.exists("VDI", into_vdi) else None
    base = base_vdi if ctx.store.exists("VDI", base_vdi) else None
    return copy_vdi(ctx, vdi, sr, into, base)


@op("VDI.resize")
def vdi_resize(ctx: Ctx, vdi, size):
    """xapi_vdi.ml ``resize``: the SM grows the disk (a VHD's new blocks unallocated); shrinking
    is refused by the backend, as vhd-util refuses it."""
    src = _source(ctx, vdi)
    size = int(size)
    if size < int(src["virtual_size"]):
        raise XapiError("SR_BACKEND_FAILURE_79", "", "VDI Invalid size", "shrinking a VHD is not supported")
    ctx.pool.slow_op(ctx.task)
    with ctx.store.lock:
        ctx.pool.disks[vdi] = GrownContent(ctx.pool.content(vdi), size)
    ctx.store.set("VDI", vdi, "virtual_size", size)
    update_usage(ctx, vdi)


@op("VDI.create")
def vdi_create(ctx: Ctx, args):
    fields = ctor_fields("VDI", args)
    require(ctx.store, "SR", fields["SR"])
    _assert_disk_sr(ctx, fields["SR"])
    if fields["virtual_size"] < 0:
        raise XapiError("INVALID_VALUE", "virtual_size", fields["virtual_size"])
    ctx.pool.slow_op(ctx.task)
    return new_vdi(ctx, fields.pop("SR"), fields, empty_content(fields["virtual_size"]))


@op("VDI.destroy")
def vdi_destroy(ctx: Ctx, self):
    rec = _source(ctx, self)
    with ctx.store.lock:
        for vbd in rec["VBDs"]:
            if ctx.store.get("VBD", vbd, "currently_attached"):
                raise XapiError("VDI_IN_USE", self, "destroy")
        for vbd in rec["VBDs"]:  # detached VBDs of halted VMs go with the disk
            ctx.store.destroy("VBD", vbd)
        ctx.store.destroy("VDI", self)
        ctx.pool.disks.pop(self, None)
        refresh_sr(ctx, rec["SR"])
    return ""


def _name_setter(field: str):
    """VDI.set_name_label/description: custom setters (the fields are RO/constructor, xapi tells the SM)."""
    def setter(ctx: Ctx, self, value):
        _source(ctx, self)
        if not isinstance(value, str):
            raise XapiError("FIELD_TYPE_ERROR", "value")
        ctx.store.set("VDI", self, field, value)
        return ""
    return setter


op("VDI.set_name_label")(_name_setter("name_label"))
op("VDI.set_name_description")(_name_setter("name_description"))


def assert_attachable(ctx: Ctx, vdi: str, mode: str) -> None:
    """A RW attach needs a writable VDI that no running VM already has RW (unless sharable)."""
    rec = _source(ctx, vdi)
    if mode == "RW" and rec["read_only"]:
        raise XapiError("VDI_READONLY", vdi)
    if mode == "RW" and not rec["sharable"]:
        for vbd in rec["VBDs"]:
            if ctx.store.get("VBD", vbd, "currently_attached") and ctx.store.get("VBD", vbd, "mode") == "RW":
                raise XapiError("VDI_IN_USE", vdi, "attach")


@op("SR.scan")
def sr_scan(ctx: Ctx, sr):
    require(ctx.store, "SR", sr)
    refresh_sr(ctx, sr)
    return ""


def seeded_vdi(ctx: Ctx, sr: str, rng: random.Random, fields: dict, density: float) -> str:
    """Inventory helper: a VDI with deterministic non-zero content."""
    return new_vdi(ctx, sr, fields, SeededContent(rng.getrandbits(48), fields["virtual_size"], density))
