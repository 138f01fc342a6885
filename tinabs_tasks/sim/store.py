"""One pool's object database: records by class and ref, with derived relations.

Set(Ref) relation fields (``VM.VBDs``, ``SR.VDIs`` ...) are not stored: they are
derived from the child's forward reference through an index, so they can never
disagree with it (xapi keeps them consistent the same way, in its DB layer).
"""
from __future__ import annotations

import contextlib
import copy
import random
import threading
import uuid as uuidlib

from tinabs_tasks.sim.datamodel import NULL_REF, model
from tinabs_tasks.sim.errors import XapiError, handle_invalid
from tinabs_tasks.sim.events import Journal

#: (parent class, set field) <- (child class, forward ref field)
RELATIONS = {
    ("VM", "VBDs"): ("VBD", "VM"),
    ("VM", "VIFs"): ("VIF", "VM"),
    ("VM", "snapshots"): ("VM", "snapshot_of"),
    ("VM", "children"): ("VM", "parent"),
    ("VDI", "VBDs"): ("VBD", "VDI"),
    ("VDI", "snapshots"): ("VDI", "snapshot_of"),
    ("SR", "VDIs"): ("VDI", "SR"),
    ("SR", "PBDs"): ("PBD", "SR"),
    ("host", "PBDs"): ("PBD", "host"),
    ("host", "resident_VMs"): ("VM", "resident_on"),
    ("network", "VIFs"): ("VIF", "network"),
    ("task", "subtasks"): ("task", "subtask_of"),
}
_FORWARD = {child: parent for parent, child in RELATIONS.items()}


def new_ref() -> str:
    return f"OpaqueRef:{uuidlib.uuid4()}"


class Store:
    """Thread-safe: every public method takes the pool lock."""

    def __init__(self):
        self.lock = threading.RLock()
        #: while the inventory is built, uuids and refs come from this (``seeded_ids``)
        self._id_rng: random.Random | None = None
        self._objects: dict[str, dict[str, dict]] = {}
        self._uuid_index: dict[tuple[str, str], str] = {}
        self._children: dict[tuple[str, str], dict[str, set[str]]] = {key: {} for key in RELATIONS}
        #: every create / write / destroy, for event.from and event.next
        self.journal = Journal()

    # -- identifiers ----------------------------------------------------------
    @contextlib.contextmanager
    def seeded_ids(self, seed: str):
        """uuids and refs made inside come from ``seed``: one ``--seed`` gives one inventory, uuids
        included.  Objects that clients create later get random ones, as xapi's do."""
        self._id_rng = random.Random(seed)
        try:
            yield
        finally:
            self._id_rng = None

    def new_uuid(self) -> str:
        rng = self._id_rng
        return str(uuidlib.uuid4() if rng is None else uuidlib.UUID(int=rng.getrandbits(128), version=4))

    # -- creation and removal -------------------------------------------------
    def create(self, cls: str, fields: dict, ref: str | None = None) -> str:
        with self.lock:
            record = model(cls).blank_record()
            record["uuid"] = self.new_uuid()
            record.update(fields)
            ref = ref or f"OpaqueRef:{self.new_uuid()}"
            for parent_key in self._relation_keys(cls):
                record.pop(parent_key[1], None)
            self._objects.setdefault(cls, {})[ref] = record
            self._uuid_index[(cls, record["uuid"])] = ref
            for field, value in record.items():
                self._link(cls, field, ref, None, value)
            self.journal.created(cls, ref, lambda: self.record(cls, ref))
            return ref

    def destroy(self, cls: str, ref: str) -> None:
        with self.lock:
            record = self._raw(cls, ref)
            for field, value in record.items():
                self._link(cls, field, ref, value, None)
            self.journal.deleted(cls, ref, lambda: self.record(cls, ref))
            del self._objects[cls][ref]
            self._uuid_index.pop((cls, record["uuid"]), None)

    # -- reads ----------------------------------------------------------------
    def exists(self, cls: str, ref) -> bool:
        return isinstance(ref, str) and ref in self._objects.get(cls, {})

    def record(self, cls: str, ref: str) -> dict:
        """A deep copy of the full record, relations included."""
        with self.lock:
            rec = copy.deepcopy(self._raw(cls, ref))
            for parent_cls, set_field in self._relation_keys(cls):
                rec[set_field] = sorted(self._children[(parent_cls, set_field)].get(ref, ()))
            return rec

    def get(self, cls: str, ref: str, field: str):
        with self.lock:
            if (cls, field) in RELATIONS:
                self._raw(cls, ref)
                return sorted(self._children[(cls, field)].get(ref, ()))
            return copy.deepcopy(self._raw(cls, ref)[field])

    def refs(self, cls: str) -> list[str]:
        with self.lock:
            return list(self._objects.get(cls, {}))

    def all_records(self, cls: str) -> dict[str, dict]:
        with self.lock:
            return {ref: self.record(cls, ref) for ref in self._objects.get(cls, {})}

    def by_uuid(self, cls: str, uuid: str) -> str:
        with self.lock:
            ref = self._uuid_index.get((cls, uuid))
            if ref is None:
                raise XapiError("UUID_INVALID", cls, uuid)
            return ref

    def find(self, cls: str, **match) -> list[str]:
        with self.lock:
            return [ref for ref, rec in self._objects.get(cls, {}).items()
                    if all(rec.get(k) == v for k, v in match.items())]

    # -- writes ---------------------------------------------------------------
    def set(self, cls: str, ref: str, field: str, value) -> None:
        with self.lock:
            record = self._raw(cls, ref)
            self._link(cls, field, ref, record.get(field), value)
            if field == "uuid":
                self._uuid_index.pop((cls, record["uuid"]), None)
                self._uuid_index[(cls, value)] = ref
            record[field] = value
            self.journal.modified(cls, ref, lambda: self.record(cls, ref))

    def update(self, cls: str, ref: str, **fields) -> None:
        with self.lock:
            for field, value in fields.items():
                self.set(cls, ref, field, value)

    # -- internals ------------------------------------------------------------
    def _raw(self, cls: str, ref: str) -> dict:
        try:
            return self._objects[cls][ref]
        except (KeyError, TypeError):
            raise handle_invalid(cls, ref) from None

    @staticmethod
    def _relation_keys(cls: str):
        return [key for key in RELATIONS if key[0] == cls]

    def _link(self, cls: str, field: str, ref: str, old, new) -> None:
        parent = _FORWARD.get((cls, field))
        if parent is None or old == new:
            return
        children = self._children[parent]
        if old and old != NULL_REF:
            children.get(old, set()).discard(ref)
            self._touch_parent(parent[0], old)
        if new and new != NULL_REF:
            children.setdefault(new, set()).add(ref)
            self._touch_parent(parent[0], new)

    def _touch_parent(self, cls: str, ref: str) -> None:
        # the parent's Set(Ref) field changed with the child's reference: xapi's DB rewrites the
        # parent row too (db_cache_types.ml update_one_to_many), so a watcher of the VM sees a mod
        # when one of its VBDs comes or goes
        self.journal.modified(cls, ref, lambda: self.record(cls, ref))
