"""The XAPI datamodel the simulator serves.

``xapi_datamodel.json`` is the machine-readable digest of the real xen-api
datamodel (message names and parameter order, record fields with type,
qualifier and default, constructor fields, error parameter lists).  Every
dispatch decision the simulator makes about *shape* (does this message exist,
how many parameters, which fields a record has, which setters exist) is read
from it, so the simulator cannot drift from the real API by hand-typing.
"""
from __future__ import annotations

import datetime as dt
import functools
import json
from dataclasses import dataclass, field
from importlib import resources

NULL_REF = "OpaqueRef:NULL"
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)

#: The classes the simulator stores objects of.
CLASSES = ("session", "pool", "host", "SR", "PBD", "VDI", "VBD", "VIF", "network", "VM", "task",
           "VM_metrics", "VM_guest_metrics")

#: Custom messages declared with ~flags:[`Session] (no Async form), FACTS.md §2.
_SYNC_ONLY = {
    "task.create", "task.destroy", "task.cancel",
    "VM.set_ha_restart_priority", "VM.set_ha_always_run", "VM.set_VCPUs_max",
    "VM.set_VCPUs_at_startup", "VM.set_memory_static_max", "VM.set_memory_static_min",
    "VM.set_memory_dynamic_max", "VM.set_memory_dynamic_min", "VM.set_HVM_boot_policy",
    "VM.set_domain_type", "VM.set_other_config",
    "event.from", "event.next", "event.get_current_id", "event.inject",
    "host.get_servertime", "host.get_server_localtime",
}

#: Classes with messages but no objects in the database (datamodel.ml ``~in_db:false``).
MESSAGE_ONLY_CLASSES = ("event",)

#: datamodel_utils.ml: every class with get_all also has these, hidden from the docs and the json.
_WHERE_MESSAGES = {"get_all_where": ["expr"], "get_all_records_where": ["expr"]}


@functools.cache
def raw() -> dict:
    text = resources.files(__package__).joinpath("xapi_datamodel.json").read_text()
    return json.loads(text)


@dataclass(frozen=True)
class FieldType:
    """A field's wire type, parsed from strings such as ``(string -> string) map``."""

    text: str

    @property
    def kind(self) -> str:
        t = self.text
        if t.endswith(" ref set"):
            return "refset"
        if t.endswith(" ref"):
            return "ref"
        if t.endswith(" map"):
            return "map"
        if t.endswith(" set"):
            return "set"
        if t.startswith("enum "):
            return "enum"
        return t  # int, bool, float, string, datetime

    @property
    def element(self) -> str:
        """For sets: the element type (``int set`` -> ``int``)."""
        return self.text[: -len(" set")] if self.text.endswith(" set") else self.text


@dataclass
class ClassModel:
    name: str
    messages: dict[str, list[str]]
    fields: list[str]
    field_info: dict[str, list]
    create_required: list[str] = field(default_factory=list)
    create_optional: list[str] = field(default_factory=list)
    param_defaults: dict[str, dict] = field(default_factory=dict)
    no_session: list[str] = field(default_factory=list)

    def ftype(self, name: str) -> FieldType:
        return FieldType(self.field_info[name][0])

    def qualifier(self, name: str) -> str:
        return self.field_info[name][1]

    def is_implicit(self, msg: str) -> bool:
        if msg in ("get_record", "get_by_uuid", "get_by_name_label", "get_all", "get_all_records",
                   *_WHERE_MESSAGES):
            return True
        for prefix in ("get_", "set_", "add_to_", "remove_from_", "add_", "remove_"):
            if msg.startswith(prefix) and msg[len(prefix):] in self.field_info:
                return self.qualifier(msg[len(prefix):]) == "RW" or prefix == "get_"
        return False

    def has_async(self, msg: str) -> bool:
        if self.name == "session" or f"{self.name}.{msg}" in _SYNC_ONLY:
            return False
        if msg in ("create", "destroy"):
            return True
        return not self.is_implicit(msg)

    def blank_record(self) -> dict:
        return {name: default_value(self.ftype(name), info[2]) for name, info in self.field_info.items()}


@functools.cache
def model(cls: str) -> ClassModel:
    d = raw()[cls]
    return ClassModel(
        name=cls,
        messages={**d["messages"], **(_WHERE_MESSAGES if "get_all" in d["messages"] else {})},
        fields=d["fields"],
        field_info=d["field_info"],
        create_required=d.get("create_required", []),
        create_optional=d.get("create_optional", []),
        param_defaults=d.get("param_defaults", {}),
        no_session=d.get("no_session", []),
    )


def error_params(code: str) -> list[str] | None:
    return raw()["errors"].get(code)


def is_known_error(code: str) -> bool:
    return code in raw()["errors"] or code.startswith("SR_BACKEND_FAILURE_")


def default_value(ftype: FieldType, default: str | None):
    """The Python value of a field default as written in the datamodel dump."""
    kind = ftype.kind
    if kind in ("ref",):
        return NULL_REF
    if kind in ("refset", "set"):
        return []
    if kind == "map":
        return {}
    if kind == "int":
        return int(default) if default not in (None, "") else 0
    if kind == "float":
        return float(default) if default else 0.0
    if kind == "bool":
        return default == "true"
    if kind == "datetime":
        return EPOCH
    if default is None:
        return ""
    return default[1:-1] if default.startswith('"') else default
