"""ova.xml: the XVA header, as ocaml/xapi/export.ml writes it (FACTS.md §7.4)."""
from __future__ import annotations

import itertools
import threading

from tinabs_tasks.sim import datamodel
from tinabs_tasks.sim import wire
from tinabs_tasks.sim.datamodel import EPOCH, NULL_REF, model

# xapi's export ids come from a process-global counter (make_id): Ref:N does
# not restart at 0 for each export, and nothing may assume it does.
_ids = itertools.count(0)
_ids_lock = threading.Lock()
_ORDER = ("host", "VM", "VBD", "VIF", "network", "VDI", "SR")


def _next_id() -> str:
    with _ids_lock:
        return f"Ref:{next(_ids)}"


def collect(store, vms: str | list[str], *, snapshots: bool, excluded: set[str] = frozenset(),
            cd_images: bool = False) -> dict[str, list[str]]:
    """Refs by class that an export of ``vms`` contains (``cd_images``: metadata only).

    export.ml ``update_table``, per VM: the VM, then (``snapshots``) its snapshots
    and its parent, each object once however many VMs refer to it.
    """
    found = {cls: [] for cls in _ORDER}
    for vm in [vms] if isinstance(vms, str) else vms:
        _add(found["VM"], vm)
        if snapshots:
            for snap in store.get("VM", vm, "snapshots"):
                _add(found["VM"], snap)
            parent = store.get("VM", vm, "parent")
            if store.exists("VM", parent):
                _add(found["VM"], parent)
    for v in found["VM"]:
        for vbd in ([] if "vbd" in excluded else store.get("VM", v, "VBDs")):
            found["VBD"].append(vbd)
            vdi = store.get("VBD", vbd, "VDI")
            # xapi streams only the disks of non-CD VBDs outside ISO SRs (export.ml): a full
            # export leaves a CD's image out, whatever SR it is on (it imports as an empty
            # drive); a metadata export keeps it so /import_metadata can re-link it.
            if vdi != NULL_REF and (cd_images or store.get("VBD", vbd, "type") != "CD") \
                    and store.get("SR", store.get("VDI", vdi, "SR"), "content_type") != "iso":
                _add(found["VDI"], vdi)
                _add(found["SR"], store.get("VDI", vdi, "SR"))
        for vif in ([] if "vif" in excluded else store.get("VM", v, "VIFs")):
            found["VIF"].append(vif)
            _add(found["network"], store.get("VIF", vif, "network"))
    return found


def _add(items: list, value) -> None:
    if value not in items:
        items.append(value)


def build(pool, found: dict[str, list[str]], *, preserve_power_state: bool,
          snapshot_metadata: bool | None = None) -> tuple[bytes, dict[str, str]]:
    """(ova.xml bytes, {export id: ref}) for the objects in ``found``.

    export.ml ``make_vm``: the power state is kept with ``preserve_power_state``; the
    snapshot fields (is_a_snapshot, snapshot_of, snapshots, snapshot_time, parent) with
    ``snapshot_metadata`` (a metadata export's ``export_snapshots``; by default the same
    as ``preserve_power_state``, as a full export clears both).
    """
    if snapshot_metadata is None:
        snapshot_metadata = preserve_power_state
    table = {ref: _next_id() for cls in _ORDER for ref in found.get(cls, [])}
    objects = []
    for cls in _ORDER:
        for ref in found.get(cls, []):
            record = _export_record(pool.store, cls, ref, preserve_power_state, snapshot_metadata)
            objects.append({"class": cls, "id": table[ref], "snapshot": _rewrite(cls, record, table)})
    header = {"version": _version(pool), "objects": objects}
    return wire.fragment(header).encode("utf-8"), {eid: ref for ref, eid in table.items()}


def _version(pool) -> dict:
    sw = pool.store.get("host", pool.master_ref, "software_version")
    major, _, minor = sw["xapi"].partition(".")
    return {"hostname": pool.store.get("host", pool.master_ref, "hostname"), "date": sw["date"],
            "product_version": sw["product_version"], "product_brand": sw["product_brand"],
            "build_number": sw["build_number"], "xapi_major": int(major), "xapi_minor": int(minor),
            "export_vsn": 2}


def _export_record(store, cls: str, ref: str, preserve_power_state: bool, snapshot_metadata: bool) -> dict:
    rec = store.record(cls, ref)
    for field, empty in (("current_operations", {}), ("allowed_operations", [])):
        if field in rec:
            rec[field] = empty
    if cls == "VM":
        if not preserve_power_state:
            rec["power_state"] = "Halted"
        if not snapshot_metadata:
            rec.update(is_a_snapshot=False, snapshot_of=NULL_REF, snapshots=[], snapshot_time=EPOCH,
                       parent=NULL_REF, transportable_snapshot_id="")
        # blobs is a (string -> blob ref) map: an empty struct, not an empty array
        rec.update(consoles=[], crash_dumps=[], blobs={}, protection_policy=NULL_REF)
    elif cls in ("VBD", "VIF"):
        rec["currently_attached"] = False
    elif cls == "SR":
        rec["PBDs"] = []
    elif cls == "network":
        rec["PIFs"] = []
    return {k: v for k, v in rec.items() if v is not None}


def _rewrite(cls: str, record: dict, table: dict[str, str]) -> dict:
    """Refs to exported objects become Ref:N, others OpaqueRef:NULL (dropped from sets)."""
    m = model(cls)
    out = {}
    for field, value in record.items():
        kind = m.ftype(field).kind if field in m.field_info else None
        if kind == "ref":
            value = table.get(value, NULL_REF)
        elif kind == "refset":
            value = [table[v] for v in value if v in table]
        elif kind == "map" and m.ftype(field).text.startswith("(") and " ref ->" in m.ftype(field).text:
            value = {table[k]: v for k, v in value.items() if k in table}
        out[field] = value
    return out


def parse(data: bytes) -> dict:
    """The header dict of an ova.xml; ValueError with the reason if it is not one."""
    try:
        header = wire.parse_value_fragment(data.decode("utf-8"))
    except Exception as exc:
        raise ValueError(f"ova.xml is not an XML-RPC value: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("objects"), list) \
            or not isinstance(header.get("version"), dict):
        raise ValueError("ova.xml lacks 'version' and 'objects'")
    for obj in header["objects"]:
        if not isinstance(obj, dict) or {"class", "id", "snapshot"} - set(obj):
            raise ValueError("ova.xml object without class/id/snapshot")
        if obj["class"] in datamodel.CLASSES:
            missing = [f for f, info in model(obj["class"]).field_info.items()
                       if info[2] is None and f not in obj["snapshot"] and model(obj["class"]).ftype(f).kind
                       not in ("refset",)]
            if missing and obj["class"] in ("VM", "VDI", "VBD", "VIF", "network", "SR"):
                raise ValueError(f"Field {missing[0]} not present in rpc")
    return header

