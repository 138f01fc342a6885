"""XML-RPC encoding exactly as xapi writes it (rpclib ``Xmlrpc``).

Differences from Python's ``xmlrpc.client.dumps`` that a client can notice:
strings are bare ``<value>text</value>``, every int is a *bare string*
(64-bit ints do not fit XML-RPC ``<i4>``), datetimes are
``YYYYMMDDTHH:MM:SSZ``.  Task results are stored as such an XML fragment.
"""
from __future__ import annotations

import datetime as dt
import xmlrpc.client
from xml.sax.saxutils import escape

from tinabs_tasks.sim.datamodel import FieldType
from tinabs_tasks.sim.errors import XapiError


class Int32(int):
    """An rpclib ``Int32``, written ``<i4>`` (event.from's valid_ref_counts) where every other
    int is a bare string: a Python client gets an int for it, not a str."""


def _encode(value, out: list[str]) -> None:
    if isinstance(value, bool):
        out.append("<value><boolean>%d</boolean></value>" % value)
    elif isinstance(value, Int32):
        out.append("<value><i4>%d</i4></value>" % value)
    elif isinstance(value, str):
        out.append("<value>%s</value>" % escape(value))
    elif isinstance(value, int):
        out.append("<value>%d</value>" % value)
    elif isinstance(value, float):
        out.append("<value><double>%.16g</double></value>" % value)
    elif isinstance(value, dt.datetime) and value.tzinfo is None:
        # a date without a zone (date.ml localtime) is written without one: print_tz None = ""
        out.append("<value><dateTime.iso8601>%s</dateTime.iso8601></value>" % value.strftime("%Y%m%dT%H:%M:%S"))
    elif isinstance(value, dt.datetime):
        stamp = value.astimezone(dt.timezone.utc).strftime("%Y%m%dT%H:%M:%SZ")
        out.append("<value><dateTime.iso8601>%s</dateTime.iso8601></value>" % stamp)
    elif isinstance(value, dict):
        out.append("<value><struct>")
        for key, item in value.items():
            out.append("<member><name>%s</name>" % escape(str(key)))
            _encode(item, out)
            out.append("</member>")
        out.append("</struct></value>")
    elif isinstance(value, (list, tuple, set, frozenset)):
        out.append("<value><array><data>")
        for item in value:
            _encode(item, out)
        out.append("</data></array></value>")
    elif value is None:
        out.append("<value></value>")
    else:
        raise TypeError(f"cannot encode {type(value).__name__}")


def fragment(value) -> str:
    """``Xmlrpc.to_string`` of a value: what ``task.get_result`` returns."""
    out: list[str] = []
    _encode(value, out)
    return "".join(out)


def success(value) -> bytes:
    return _envelope({"Status": "Success", "Value": value})


def failure(description: list[str]) -> bytes:
    return _envelope({"Status": "Failure", "ErrorDescription": list(description)})


def _envelope(struct: dict) -> bytes:
    body = fragment(struct)
    return ('<?xml version="1.0"?><methodResponse><params><param>%s</param></params></methodResponse>'
            % body).encode("utf-8")


def parse_call(body: bytes) -> tuple[str, tuple]:
    """(method, params) of an XML-RPC request; XapiError on garbage."""
    try:
        params, method = xmlrpc.client.loads(body, use_builtin_types=False)
    except Exception as exc:  # expat and xmlrpc raise a zoo of types
        raise XapiError("INTERNAL_ERROR", f"XML-RPC parse error: {exc}") from None
    if not method:
        raise XapiError("INTERNAL_ERROR", "XML-RPC request has no methodName")
    return method, params


def parse_value_fragment(text: str):
    """Inverse of :func:`fragment` (used for ova.xml and task results)."""
    doc = "<methodResponse><params><param>%s</param></params></methodResponse>" % text
    (value,), _ = xmlrpc.client.loads(doc, use_builtin_types=False)
    return value


def coerce(ftype: FieldType, value, field: str):
    """Turn an inbound wire value into the stored Python value, or FIELD_TYPE_ERROR."""
    kind = ftype.kind
    try:
        if kind == "int":
            if isinstance(value, bool):
                raise ValueError
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            raise ValueError
        if kind == "datetime":
            if isinstance(value, xmlrpc.client.DateTime):
                return dt.datetime.strptime(value.value.replace("-", ""), "%Y%m%dT%H:%M:%S").replace(
                    tzinfo=dt.timezone.utc)
            return dt.datetime.strptime(str(value).rstrip("Z"), "%Y%m%dT%H:%M:%S").replace(tzinfo=dt.timezone.utc)
        if kind == "map":
            if not isinstance(value, dict):
                raise ValueError
            return {str(k): _scalar(v) for k, v in value.items()}
        if kind in ("set", "refset"):
            if not isinstance(value, list):
                raise ValueError
            elem = FieldType(ftype.element)
            return [coerce(elem, v, field) for v in value]
        if kind == "ref":
            if not isinstance(value, str) or not value.startswith("OpaqueRef:"):
                raise ValueError
            return value
        if not isinstance(value, str):
            raise ValueError
        return value
    except (TypeError, ValueError):
        raise XapiError("FIELD_TYPE_ERROR", field) from None


def _scalar(value):
    return value if isinstance(value, str) else str(value)


def to_json(value):
    """JSON form of a stored value (for the control API)."""
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.timezone.utc).strftime("%Y%m%dT%H:%M:%SZ")
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    return value
