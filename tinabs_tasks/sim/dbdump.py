"""The pool database as ``GET /pool/xmldbdump`` serves it (ocaml/database/db_xml.ml ``To``).

One XML document, written by Xmlm without indentation::

    <?xml version="1.0" encoding="UTF-8"?>
    <database><manifest><pair key="schema_major_vsn" value="5"/>...</manifest>
    <table name="SR"><row ref="OpaqueRef:..." __ctime="3" __mtime="3" name__label="Local%.storage" .../></table>
    ...</database>

* tables in name order (``TableSet`` is a string map), rows in ref order, columns in name
  order after ``ref``, ``__ctime``, ``__mtime``;
* a column is the field's full datamodel name joined by ``__`` (``Escaping.escape_id``):
  fields inside a namespace (``name``, ``memory``, ``VCPUs``, ``actions``, ``PV``, ``HVM``,
  ``API_version``, ``qos``) become ``name__label``, ``memory__static_max`` ...;
* a value is its database string (gen_db_actions.ml ``DM_to_String``): ints in decimal,
  bools ``true``/``false``, floats ``%0.18g``, dates ``YYYYMMDDTHH:MM:SSZ``, sets and maps
  as S-expressions (``('a' 'b')``, ``(('k' 'v'))``, sExpr.ml ``string_of``), then
  ``Xml_spaces.protect`` (space ``%.``, tab ``%t``, newline ``%n``, return ``%r``, ``%%``);
* ``Set(Ref _)`` relation fields live in the other table and are not columns;
* tables that do not persist (``session``, ``task``) are written empty.

The simulator's store keeps no generation counts: rows are numbered in creation order
(``__ctime`` = ``__mtime``) and the manifest's ``generation_count`` is the last number.
"""
from __future__ import annotations

import datetime as dt
from xml.sax.saxutils import quoteattr

from tinabs_tasks.sim import datamodel

#: datamodel_common.ml ``schema_major_vsn`` / ``schema_minor_vsn`` of a 2024 xapi (API 2.21).
SCHEMA_VERSION = (5, 781)

#: Namespaced fields by class (datamodel*.ml ``namespace ~name``): API name prefix -> namespace.
_NAMESPACES = {
    "host": ("name", "memory", "API_version"),
    "VM": ("name", "memory", "VCPUs", "actions", "PV", "HVM"),
    "VM_metrics": ("memory", "VCPUs"),
    "VBD": ("qos",),
    "VIF": ("qos",),
}
_NOT_PERSISTED = {"session", "task"}


def column(cls: str, field: str) -> str:
    """The database column of API field ``field`` (``name_label`` -> ``name__label``)."""
    for space in _NAMESPACES.get(cls, ("name",)):
        if field.startswith(space + "_"):
            return space + "__" + field[len(space) + 1:]
    return field


def database_xml(store) -> bytes:
    """The whole database of ``store`` as Db_xml writes it."""
    tables, generation = [], 0
    for cls in sorted(datamodel.CLASSES):
        if cls in _NOT_PERSISTED:
            tables.append(f"<table name={quoteattr(cls)}/>")
            continue
        m = datamodel.model(cls)
        numbered = {}
        for ref in store.refs(cls):
            generation += 1
            numbered[ref] = generation
        rows = []
        for ref in sorted(numbered):
            try:
                rec = store.record(cls, ref)
            except Exception:  # destroyed since refs() was read: xapi dumps under its DB lock
                continue
            cells = sorted((column(cls, f), _value(m.ftype(f), v)) for f, v in rec.items()
                           if f in m.field_info and m.ftype(f).kind != "refset")
            stamp = str(numbered[ref])
            attrs = [("ref", ref), ("__ctime", stamp), ("__mtime", stamp)] + cells
            rows.append("<row " + " ".join(f"{k}={quoteattr(_protect(v))}" for k, v in attrs) + "/>")
        tables.append(f"<table name={quoteattr(cls)}>" + "".join(rows) + "</table>")
    major, minor = SCHEMA_VERSION
    manifest = (f'<manifest><pair key="schema_major_vsn" value="{major}"/>'
                f'<pair key="schema_minor_vsn" value="{minor}"/>'
                f'<pair key="generation_count" value="{generation}"/></manifest>')
    text = '<?xml version="1.0" encoding="UTF-8"?>\n<database>' + manifest + "".join(tables) + "</database>"
    return text.encode("utf-8")


def _value(ftype: datamodel.FieldType, value) -> str:
    kind = ftype.kind
    if kind == "set":
        return _sexpr([_scalar(v) for v in value])
    if kind == "map":
        return "(" + " ".join(f"({_quote(_scalar(k))} {_quote(_scalar(v))})" for k, v in value.items()) + ")"
    return _scalar(value)


def _scalar(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "%.18g" % value
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.timezone.utc).strftime("%Y%m%dT%H:%M:%SZ")
    return str(value)


def _sexpr(items: list[str]) -> str:
    return "(" + " ".join(_quote(i) for i in items) + ")"


def _quote(text: str) -> str:
    """sExpr.ml: a string in single quotes, with ``\\``, ``"`` and ``'`` backslash-escaped."""
    return "'" + text.replace("\\", "\\\\").replace('"', '\\"').replace("'", "\\'") + "'"


def _protect(text: str) -> str:
    """Xml_spaces.protect: whitespace that XML attributes would not keep, as %-escapes."""
    return (text.replace("%", "%%").replace(" ", "%.").replace("\t", "%t")
            .replace("\n", "%n").replace("\r", "%r"))
