"""PUT /import and /import_metadata: objects from ova.xml, disks from the stream.

Semantics from ocaml/xapi/import.ml: ``ova.xml`` must come first
(``IMPORT_ERROR_UNEXPECTED_FILE``), a newer exporter is refused
(``IMPORT_INCOMPATIBLE_VERSION``), networks are matched by uuid then bridge
(else created), MACs are blanked and regenerated unless ``restore=true``,
chunks are written sequentially with strictly increasing numbers, checksums
are verified unless ``force=true``, and a failed import removes what it made
(unless ``force=true``).  As on import and clone, ``order``, ``start_delay``,
``shutdown_delay`` and ``ha_always_run`` come back reset.
"""
from __future__ import annotations

from tinabs_tasks.sim import ovaxml
from tinabs_tasks.sim import wire
from tinabs_tasks.sim.datamodel import NULL_REF, model
from tinabs_tasks.sim.disks import FileContent
from tinabs_tasks.sim.errors import XapiError
from tinabs_tasks.sim.ops import Ctx
from tinabs_tasks.sim.ops import storage
from tinabs_tasks.sim.ops import vm_lifecycle
from tinabs_tasks.sim.ops import vm_metrics
from tinabs_tasks.sim.ops.construct import random_mac
from tinabs_tasks.sim.xva import TarFormatError, TarReader, verify_checksum

_RESET_ON_IMPORT = {"order": 0, "start_delay": 0, "shutdown_delay": 0, "ha_always_run": False}


class Import:
    def __init__(self, pool, sr: str, *, restore: bool, force: bool, task: str | None):
        self.pool, self.sr, self.restore, self.force, self.task = pool, sr, restore, force, task
        self.ctx = Ctx(pool, None, pool.master_ref, task)
        self.created: list[tuple[str, str]] = []  # (class, ref) in creation order
        self.table: dict[str, str] = {}            # export id -> new ref
        self.vms: list[str] = []

    # -- entry points ---------------------------------------------------------
    def run_xva(self, reader: TarReader, total: int | None) -> list[str]:
        return self._guarded(lambda: self._xva(reader, total))

    def run_metadata(self, reader: TarReader, vdi_map: dict[str, str], dry_run: bool) -> list[str]:
        return self._guarded(lambda: self._metadata(reader, vdi_map, dry_run))

    def _guarded(self, work) -> list[str]:
        try:
            return work()
        except BaseException as exc:
            if not self.force:
                self.rollback()
            if isinstance(exc, XapiError):
                raise
            if isinstance(exc, EOFError):
                raise XapiError("IMPORT_ERROR_PREMATURE_EOF") from None
            if isinstance(exc, (TarFormatError, ValueError)):
                raise XapiError("IMPORT_ERROR", str(exc)) from None
            raise

    # -- XVA ------------------------------------------------------------------
    def _xva(self, reader: TarReader, total: int | None) -> list[str]:
        header = self._header(reader)
        self._create_objects(header, vdi_source=self._new_vdi)
        if self.task:
            self.pool.store.set("task", self.task, "other_config", {"object_creation": "complete"})
        self._stream_disks(reader, header, total)
        return self.vms

    def _header(self, reader: TarReader) -> dict:
        first = reader.next()
        if first is None:
            raise XapiError("IMPORT_ERROR_PREMATURE_EOF")
        name, size = first
        if name != "ova.xml":
            raise XapiError("IMPORT_ERROR_UNEXPECTED_FILE", "ova.xml", name)
        header = ovaxml.parse(reader.data(size))
        version = header["version"]
        mine = self.pool.store.get("host", self.pool.master_ref, "software_version")["xapi"].split(".")
        try:
            theirs = (int(version.get("xapi_major", 0)), int(version.get("xapi_minor", 0)))
        except (TypeError, ValueError):
            raise ValueError("ova.xml version has non-numeric xapi_major/xapi_minor") from None
        if theirs > (int(mine[0]), int(mine[1])):
            raise XapiError("IMPORT_INCOMPATIBLE_VERSION")
        return header

    def _stream_disks(self, reader: TarReader, header: dict, total: int | None) -> None:
        sizes = {o["id"]: int(o["snapshot"]["virtual_size"]) for o in header["objects"] if o["class"] == "VDI"}
        written = {eid: 0 for eid in sizes}
        last_no = {eid: -1 for eid in sizes}
        # stream_vdi.ml: a gap is (this - last - 1) x the length of the disk's *first*
        # chunk; the current chunk may be the short last one of an odd-sized disk.
        first_len: dict[str, int] = {}
        while (entry := reader.next()) is not None:
            name, size = entry
            eid, _, number = name.partition("/")
            if eid not in self.table or not number.isdigit() or len(number) != 8:
                if eid not in self.table and number[:8].isdigit():
                    raise XapiError("IMPORT_ERROR_FAILED_TO_FIND_OBJECT", eid)
                raise XapiError("IMPORT_ERROR_UNEXPECTED_FILE", f"{eid}/NNNNNNNN", name)
            data = reader.data(size)
            check = reader.next()
            if check is None or check[0] not in (name + ".xxhash", name + ".checksum"):
                raise XapiError("IMPORT_ERROR_UNEXPECTED_FILE", name + ".xxhash", check[0] if check else "")
            if not verify_checksum(data, check[0], reader.data(check[1])) and not self.force:
                raise XapiError("IMPORT_ERROR_SOME_CHECKSUMS_FAILED")
            no = int(number)
            if no <= last_no[eid]:
                raise ValueError(f"chunk {name} out of order")
            if data and eid not in first_len:
                first_len[eid] = len(data)
            offset = written[eid] + (no - last_no[eid] - 1) * first_len.get(eid, 1 << 20)
            if offset + len(data) > sizes[eid]:
                raise ValueError(f"chunk {name} goes past the end of the disk")
            if data:
                self.pool.disks[self.table[eid]].write(offset, data)
            written[eid], last_no[eid] = offset + len(data), no
            self._progress(reader, total)
        short = [eid for eid, size in sizes.items() if written[eid] != size]
        if short:
            raise XapiError("IMPORT_ERROR_PREMATURE_EOF")
        for eid in sizes:
            vdi = self.table[eid]
            self.pool.store.set("VDI", vdi, "physical_utilisation", self.pool.disks[vdi].nonzero_bytes())
        storage.refresh_sr(self.ctx, self.sr)

    def _progress(self, reader: TarReader, total: int | None) -> None:
        if self.task and total:
            self.pool.tasks.progress(self.task, reader.bytes_read / total)
        self.pool.tasks.check_cancel(self.task)

    # -- metadata -------------------------------------------------------------
    def _metadata(self, reader: TarReader, vdi_map: dict[str, str], dry_run: bool) -> list[str]:
        header = self._header(reader)

        def existing_vdi(eid: str, rec: dict) -> str:
            wanted = vdi_map.get(eid) or vdi_map.get(rec.get("uuid", ""))
            if wanted:
                return wanted if self.pool.store.exists("VDI", wanted) else self.pool.store.by_uuid("VDI", wanted)
            try:
                return self.pool.store.by_uuid("VDI", rec.get("uuid", ""))
            except XapiError:
                raise XapiError("IMPORT_ERROR_FAILED_TO_FIND_OBJECT", eid) from None

        if dry_run:
            for obj in header["objects"]:
                if obj["class"] == "VDI":
                    existing_vdi(obj["id"], obj["snapshot"])
            return []
        self._create_objects(header, vdi_source=existing_vdi, skip_snapshots=True)
        return self.vms

    # -- objects --------------------------------------------------------------
    def _create_objects(self, header: dict, vdi_source, skip_snapshots: bool = False) -> None:
        by_class: dict[str, list[dict]] = {}
        for obj in header["objects"]:
            by_class.setdefault(obj["class"], []).append(obj)
        for obj in by_class.get("VDI", []):
            self.table[obj["id"]] = vdi_source(obj["id"], obj["snapshot"])
        for obj in by_class.get("VM", []):
            rec = obj["snapshot"]
            if skip_snapshots and _bool(rec.get("is_a_snapshot")):
                continue
            if _bool(rec.get("is_a_template")) and rec.get("other_config", {}).get("default_template") == "true":
                # import.ml VM.precheck (Default_template): a default template is never imported again;
                # its id stands for this pool's template of that name (or nothing), and no VM is made
                same = self.pool.store.find("VM", name_label=rec.get("name_label", ""))
                self.table[obj["id"]] = same[0] if same else NULL_REF
                continue
            self.table[obj["id"]] = self._new_vm(rec)
        for obj in by_class.get("network", []):
            self.table[obj["id"]] = self._network(obj["snapshot"])
        for obj in by_class.get("VBD", []):
            self._new_vbd(obj["snapshot"])
        for obj in by_class.get("VIF", []):
            self._new_vif(obj["snapshot"])

    def _track(self, cls: str, ref: str) -> str:
        self.created.append((cls, ref))
        return ref

    def _new_vdi(self, eid: str, rec: dict) -> str:
        size = int(rec["virtual_size"])
        fields = {"name_label": rec.get("name_label", ""), "name_description": rec.get("name_description", ""),
                  "virtual_size": size, "type": rec.get("type", "user"), "sharable": _bool(rec.get("sharable")),
                  "read_only": _bool(rec.get("read_only")), "other_config": dict(rec.get("other_config", {}))}
        content = FileContent(self.pool.scratch_dir, size)
        ref = self._track("VDI", storage.new_vdi(self.ctx, self.sr, fields, content))
        self._keep_uuid("VDI", ref, rec)
        return ref

    def _new_vm(self, rec: dict) -> str:
        m = model("VM")
        fields = {f: wire.coerce(m.ftype(f), rec[f], f) for f in m.create_required + m.create_optional
                  if f in rec and f not in ("suspend_VDI", "suspend_SR", "appliance", "protection_policy",
                                            "snapshot_schedule", "affinity")}
        fields.update(_RESET_ON_IMPORT, power_state="Halted", is_a_snapshot=False, snapshot_of=NULL_REF,
                      resident_on=NULL_REF, domid=-1, is_control_domain=False,
                      is_a_template=_bool(rec.get("is_a_template")))
        fields["metrics"] = self._track("VM_metrics", vm_metrics.new_metrics(self.pool.store))  # as VM.create
        ref = self._track("VM", self.pool.store.create("VM", fields))
        vm_lifecycle.refresh_allowed(self.ctx, ref)
        self._keep_uuid("VM", ref, rec)
        self.vms.append(ref)
        return ref

    def _network(self, rec: dict) -> str:
        store = self.pool.store
        try:
            return store.by_uuid("network", rec.get("uuid", ""))
        except XapiError:
            pass
        same_bridge = store.find("network", bridge=rec.get("bridge", ""))
        if same_bridge:
            return same_bridge[0]
        return self._track("network", store.create("network", {
            "name_label": rec.get("name_label", ""), "bridge": rec.get("bridge", ""),
            "MTU": int(rec.get("MTU", 1500)), "other_config": dict(rec.get("other_config", {})), "managed": True}))

    def _new_vbd(self, rec: dict) -> None:
        vm = self.table.get(rec["VM"])
        if vm is None:
            return  # a snapshot's VBD when snapshots are not imported
        vdi = self.table.get(rec.get("VDI"), NULL_REF)
        self._track("VBD", self.pool.store.create("VBD", {
            "VM": vm, "VDI": vdi, "userdevice": rec["userdevice"], "bootable": _bool(rec.get("bootable")),
            "mode": rec["mode"], "type": rec["type"], "empty": vdi == NULL_REF,
            "other_config": dict(rec.get("other_config", {})), "qos_algorithm_type": rec.get("qos_algorithm_type", ""),
            "qos_algorithm_params": dict(rec.get("qos_algorithm_params", {})), "device": rec.get("device", ""),
            "unpluggable": _bool(rec.get("unpluggable", True)), "currently_attached": False}))

    def _new_vif(self, rec: dict) -> None:
        vm = self.table.get(rec["VM"])
        if vm is None:
            return
        mac = rec["MAC"] if self.restore else random_mac()
        self._track("VIF", self.pool.store.create("VIF", {
            "VM": vm, "network": self.table.get(rec["network"]) or self._network({}), "device": rec["device"],
            "MAC": mac, "MAC_autogenerated": not self.restore, "MTU": int(rec["MTU"]),
            "other_config": dict(rec.get("other_config", {})), "qos_algorithm_type": rec.get("qos_algorithm_type", ""),
            "qos_algorithm_params": dict(rec.get("qos_algorithm_params", {})),
            "locking_mode": rec.get("locking_mode", "network_default"), "currently_attached": False}))

    def _keep_uuid(self, cls: str, ref: str, rec: dict) -> None:
        """restore=true keeps the original uuid when it is free in this pool."""
        uuid = rec.get("uuid")
        if self.restore and uuid:
            try:
                self.pool.store.by_uuid(cls, uuid)
            except XapiError:
                self.pool.store.set(cls, ref, "uuid", uuid)

    def rollback(self) -> None:
        store = self.pool.store
        for cls, ref in reversed(self.created):
            if store.exists(cls, ref):
                store.destroy(cls, ref)
            if cls == "VDI":
                content = self.pool.disks.pop(ref, None)
                if isinstance(content, FileContent):
                    content.close()
        for sr in {self.sr}:
            if store.exists("SR", sr):
                storage.refresh_sr(self.ctx, sr)
        self.created.clear()


def _bool(value) -> bool:
    return value is True or value == "true" or value == "1" or value == 1
