"""VM power operations: start(_on), shutdowns, reboots, suspend, resume(_on), pause, unpause.

Power-state rules and concurrency come from ..vm_lifecycle (xapi_vm_lifecycle.ml).  What each
operation leaves behind follows xapi_vm.ml and xapi_vm_lifecycle.ml ``force_state_reset``: a
Halted or Suspended VM has no resident host and domid -1; Halted detaches its devices; a suspend
writes the memory image to a new VDI of type ``suspend`` (VM.suspend_SR, else the pool's
suspend_image_SR, else its default SR: xapi_vm_helpers.ml ``choose_suspend_sr``) which resume
and a hard shutdown destroy.
"""
from __future__ import annotations

import hashlib

from tinabs_tasks.sim.datamodel import NULL_REF
from tinabs_tasks.sim.disks import SeededContent
from tinabs_tasks.sim.errors import XapiError
from tinabs_tasks.sim.ops import Ctx, op
from tinabs_tasks.sim.ops import storage
from tinabs_tasks.sim.ops import vm_metrics
from tinabs_tasks.sim.ops.construct import require
from tinabs_tasks.sim.ops.vm_lifecycle import refresh_allowed, vm_operation, vm_record

_NOT_RESIDENT = {"resident_on": NULL_REF, "scheduled_to_be_resident_on": NULL_REF, "domid": -1}


@op("VM.start")
def start(ctx: Ctx, vm, start_paused, force):
    with vm_operation(ctx, vm, "start"):
        _boot(ctx, vm, _home_host(ctx, vm), start_paused)
    return ""


@op("VM.start_on")
def start_on(ctx: Ctx, vm, host, start_paused, force):
    with vm_operation(ctx, vm, "start_on"):
        _assert_can_boot_here(ctx, vm, host)
        _boot(ctx, vm, host, start_paused)
    return ""


def _home_host(ctx: Ctx, vm: str) -> str:
    """Where start and resume put a VM: its affinity host when that exists, else the master."""
    affinity = vm_record(ctx, vm)["affinity"]
    return affinity if ctx.store.exists("host", affinity) else ctx.pool.master_ref


def _assert_can_boot_here(ctx: Ctx, vm: str, host) -> None:
    """xapi_vm_helpers.ml assert_can_boot_here: a live, enabled host that sees the VM's SRs."""
    require(ctx.store, "host", host)
    if not ctx.store.get("host", host, "enabled"):
        raise XapiError("HOST_DISABLED", host)
    for vbd in ctx.store.get("VM", vm, "VBDs"):
        vdi = ctx.store.get("VBD", vbd, "VDI")
        if vdi != NULL_REF:
            sr = ctx.store.get("VDI", vdi, "SR")
            if not ctx.pool.sr_visible_from(sr, host):
                raise XapiError("VM_REQUIRES_SR", vm, sr)


def _boot(ctx: Ctx, vm: str, host: str, start_paused: bool) -> None:
    rec = vm_record(ctx, vm)
    _assert_disks_attachable(ctx, rec)
    with ctx.store.lock:
        if rec["ha_restart_priority"] == "restart":  # xapi_vm.ml start: a protected VM is now always-run
            ctx.store.set("VM", vm, "ha_always_run", True)
        ctx.store.update("VM", vm, power_state="Paused" if start_paused else "Running", resident_on=host,
                         domid=_next_domid(ctx))
        set_attached(ctx, rec, True)
        # xapi_vm.ml start: stale guest metrics go; the guest agent reports once the guest runs
        vm_metrics.delete_guest_metrics(ctx.store, vm)
        vm_metrics.running_metrics(ctx.store, vm)
        if not start_paused:
            vm_metrics.guest_agent_report(ctx.store, vm)
        refresh_allowed(ctx, vm)


def _assert_disks_attachable(ctx: Ctx, rec: dict) -> None:
    for vbd in rec["VBDs"]:
        v = ctx.store.record("VBD", vbd)
        if v["VDI"] != NULL_REF:
            storage.assert_attachable(ctx, v["VDI"], v["mode"])


def _next_domid(ctx: Ctx) -> int:
    return max([ctx.store.get("VM", r, "domid") for r in ctx.store.refs("VM")] + [0]) + 1


def set_attached(ctx: Ctx, rec: dict, attached: bool) -> None:
    for vbd in rec["VBDs"]:
        ctx.store.set("VBD", vbd, "currently_attached", attached)
    for vif in rec["VIFs"]:
        ctx.store.set("VIF", vif, "currently_attached", attached)


def halt(ctx: Ctx, vm: str) -> None:
    """force_state_reset Halted: detached, nowhere, no suspend image, no longer HA-run."""
    with ctx.store.lock:
        rec = vm_record(ctx, vm)
        drop_vdi(ctx, rec["suspend_VDI"])
        ctx.store.update("VM", vm, power_state="Halted", ha_always_run=False, suspend_VDI=NULL_REF,
                         requires_reboot=False, **_NOT_RESIDENT)
        set_attached(ctx, rec, False)
        refresh_allowed(ctx, vm)


def _shutdown(operation: str):
    def shutdown(ctx: Ctx, vm):
        with vm_operation(ctx, vm, operation):
            ctx.pool.slow_op(ctx.task)
            halt(ctx, vm)
        return ""
    return shutdown


op("VM.clean_shutdown")(_shutdown("clean_shutdown"))
op("VM.hard_shutdown")(_shutdown("hard_shutdown"))
op("VM.shutdown")(_shutdown("shutdown"))


def _reboot(operation: str):
    def reboot(ctx: Ctx, vm):
        """A new domain on the same host: new domid and start_time, fresh guest metrics."""
        with vm_operation(ctx, vm, operation):
            ctx.pool.slow_op(ctx.task)
            with ctx.store.lock:
                ctx.store.update("VM", vm, power_state="Running", domid=_next_domid(ctx))
                vm_metrics.running_metrics(ctx.store, vm)
                vm_metrics.guest_agent_report(ctx.store, vm)
                refresh_allowed(ctx, vm)
        return ""
    return reboot


op("VM.clean_reboot")(_reboot("clean_reboot"))
op("VM.hard_reboot")(_reboot("hard_reboot"))


def suspend_sr(ctx: Ctx, rec: dict) -> str:
    """xapi_vm_helpers.ml choose_suspend_sr: VM.suspend_SR, else pool.suspend_image_SR, else default SR."""
    pool = ctx.store.refs("pool")[0]
    for sr in (rec["suspend_SR"], ctx.store.get("pool", pool, "suspend_image_SR"),
               ctx.store.get("pool", pool, "default_SR")):
        if ctx.store.exists("SR", sr):
            return sr
    raise XapiError("VM_NO_SUSPEND_SR", rec["uuid"])


def new_suspend_vdi(ctx: Ctx, rec: dict) -> str:
    """The memory image: a ``suspend`` VDI as big as the VM's memory, mostly zero."""
    size = rec["memory_static_max"]
    seed = int.from_bytes(hashlib.sha256(f"memory:{rec['uuid']}".encode()).digest()[:6], "big")
    return storage.new_vdi(ctx, suspend_sr(ctx, rec), {
        "name_label": "Suspend image", "name_description": "Suspend image", "virtual_size": size,
        "type": "suspend", "sharable": False, "read_only": False, "other_config": {}},
        SeededContent(seed, size, 0.01))


def drop_vdi(ctx: Ctx, vdi: str) -> None:
    """Destroy a VDI and its VBDs (a suspend image, a disk replaced by a revert)."""
    if not ctx.store.exists("VDI", vdi):
        return
    sr = ctx.store.get("VDI", vdi, "SR")
    for vbd in ctx.store.get("VDI", vdi, "VBDs"):
        ctx.store.destroy("VBD", vbd)
    ctx.store.destroy("VDI", vdi)
    ctx.pool.disks.pop(vdi, None)
    storage.refresh_sr(ctx, sr)


@op("VM.suspend")
def suspend(ctx: Ctx, vm):
    with vm_operation(ctx, vm, "suspend"):
        ctx.pool.slow_op(ctx.task)
        with ctx.store.lock:
            rec = vm_record(ctx, vm)
            image = new_suspend_vdi(ctx, rec)
            ctx.store.update("VM", vm, power_state="Suspended", suspend_VDI=image, **_NOT_RESIDENT)
            set_attached(ctx, rec, False)
            refresh_allowed(ctx, vm)
    return ""


@op("VM.resume")
def resume(ctx: Ctx, vm, start_paused, force):
    with vm_operation(ctx, vm, "resume"):
        _wake(ctx, vm, _home_host(ctx, vm), start_paused)
    return ""


@op("VM.resume_on")
def resume_on(ctx: Ctx, vm, host, start_paused, force):
    with vm_operation(ctx, vm, "resume_on"):
        _assert_can_boot_here(ctx, vm, host)
        _wake(ctx, vm, host, start_paused)
    return ""


def _wake(ctx: Ctx, vm: str, host: str, start_paused: bool) -> None:
    """The domain comes back from its image, which is then destroyed; start_time and the
    guest metrics carry on (xenopsd keeps last_start_time across a suspend)."""
    ctx.pool.slow_op(ctx.task)
    rec = vm_record(ctx, vm)
    _assert_disks_attachable(ctx, rec)
    with ctx.store.lock:
        drop_vdi(ctx, rec["suspend_VDI"])
        ctx.store.update("VM", vm, power_state="Paused" if start_paused else "Running", resident_on=host,
                         suspend_VDI=NULL_REF, domid=_next_domid(ctx))
        set_attached(ctx, rec, True)
        refresh_allowed(ctx, vm)


@op("VM.pause")
def pause(ctx: Ctx, vm):
    with vm_operation(ctx, vm, "pause"):
        ctx.store.set("VM", vm, "power_state", "Paused")
    refresh_allowed(ctx, vm)
    return ""


@op("VM.unpause")
def unpause(ctx: Ctx, vm):
    with vm_operation(ctx, vm, "unpause"):
        with ctx.store.lock:
            ctx.store.set("VM", vm, "power_state", "Running")
            if not ctx.store.exists("VM_guest_metrics", ctx.store.get("VM", vm, "guest_metrics")):
                vm_metrics.guest_agent_report(ctx.store, vm)  # started paused: the agent runs now
    refresh_allowed(ctx, vm)
    return ""
