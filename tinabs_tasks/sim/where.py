"""xapi's row-filter language, used by the hidden ``<class>.get_all_records_where(expr)``.

Grammar (ocaml/database/db_filter_lex.mll, db_filter_parse.mly)::

    expr  := value "=" value | expr "and" expr | expr "or" expr | "not" expr
           | "true" | "false" | "(" expr ")"
    value := '"' chars '"'            (a literal; no escapes, no '"' inside)
           | "field" '"' column '"'   (a database column)

``and`` and ``or`` have the same precedence and group to the left
(``%left LAND LOR``); ``not`` is declared before them, so it binds *less*
tightly: ``not a and b or c`` means ``not ((a and b) or c)``.  Only space, tab and newline
separate tokens.  A bad expression is ``INVALID_VALUE [expr, exception]``
(exnHelper.ml ``Db_filter.Expression_error``).

A field is a *database column*, compared as the database's string form of
the value (db_cache_impl.ml find_refs_with_filter, ``Schema.Value.marshal``):
namespaced fields use ``__`` (``name__label``, ``memory__static_max``,
``VCPUs__max``, ``PV__kernel``, ``other_config`` is one column); ints are
decimal, bools ``true``/``false``, datetimes ``20261207T16:30:00Z``, sets and
maps s-expressions (``('a' 'b')``, ``(('k' 'v'))``).  There is no way to
address one map key.  A column the table lacks fails when a row is tested:
``INTERNAL_ERROR ["missing field", column, ""]`` (Db_exn.DBCache_NotFound).
"""
from __future__ import annotations

import datetime as dt
import re

from tinabs_tasks.sim.errors import XapiError

#: datamodel.ml ``namespace ~name:...``: API field "<ns>_<f>" is DB column "<ns>__<f>"
NAMESPACES = {
    "VM": ("name", "memory", "VCPUs", "actions", "PV", "HVM"),
    "host": ("name", "memory", "API_version"),
    "SR": ("name",), "VDI": ("name",), "network": ("name",), "task": ("name",),
    "VBD": ("qos",), "VIF": ("qos",),
}
REF_COLUMN = "_ref"  # Db_names.ref

_TOKEN = re.compile(r'[ \t\n]*(?:(=|\(|\))|(true|false|field|and|or|not)|"([^"]*)")')
_PARSE_ERROR = "Stdlib.Parsing.Parse_error"
_LEX_ERROR = 'Failure("lexing: empty token")'


class BadExpression(Exception):
    pass


def parse(text) -> tuple:
    """The expression tree: ("true",), ("false",), ("not", e), ("and"|"or", a, b), ("eq", v, v)
    with values ("field", name) or ("literal", text); INVALID_VALUE if it does not parse."""
    if not isinstance(text, str):
        raise XapiError("FIELD_TYPE_ERROR", "expr")
    try:
        tokens = _tokens(text)
        expr, rest = _expr(tokens)
        if rest != [("eof",)]:
            raise BadExpression(_PARSE_ERROR)
        return expr
    except BadExpression as exc:
        raise XapiError("INVALID_VALUE", text, str(exc)) from None


def _tokens(text: str) -> list[tuple]:
    out, pos = [], 0
    while True:
        while pos < len(text) and text[pos] in " \t\n":
            pos += 1
        if pos == len(text):
            out.append(("eof",))
            return out
        m = _TOKEN.match(text, pos)
        if m is None:
            raise BadExpression(_LEX_ERROR)
        punct, word, ident = m.groups()
        out.append((punct or word,) if ident is None else ("ident", ident))
        pos = m.end()


def _expr(tokens: list) -> tuple:
    """expr (("and"|"or") expr)*, left to right."""
    left, tokens = _unary(tokens)
    while tokens[0][0] in ("and", "or"):
        right, rest = _unary(tokens[1:])
        left, tokens = (tokens[0][0], left, right), rest
    return left, tokens


def _unary(tokens: list) -> tuple:
    kind = tokens[0][0]
    if kind == "not":
        # LNOT is declared before LAND/LOR, so it binds *less* tightly: "not a or b" is
        # "not (a or b)", the parser shifting the whole and/or chain into the not
        inner, rest = _expr(tokens[1:])
        return ("not", inner), rest
    if kind in ("true", "false"):
        return (kind,), tokens[1:]
    if kind == "(":
        inner, rest = _expr(tokens[1:])
        if rest[0][0] != ")":
            raise BadExpression(_PARSE_ERROR)
        return inner, rest[1:]
    left, rest = _value(tokens)
    if rest[0][0] != "=":
        raise BadExpression(_PARSE_ERROR)
    right, rest = _value(rest[1:])
    return ("eq", left, right), rest


def _value(tokens: list) -> tuple:
    if tokens[0][0] == "ident":
        return ("literal", tokens[0][1]), tokens[1:]
    if tokens[0][0] == "field" and tokens[1][0] == "ident":
        return ("field", tokens[1][1]), tokens[2:]
    raise BadExpression(_PARSE_ERROR)


def matches(expr: tuple, row: dict) -> bool:
    """Db_filter.eval_expr over one row (``row``: column -> database string); ``and`` / ``or``
    stop early as OCaml's do, so a missing column on the untested side is no error."""
    kind = expr[0]
    if kind in ("true", "false"):
        return kind == "true"
    if kind == "not":
        return not matches(expr[1], row)
    if kind == "and":
        return matches(expr[1], row) and matches(expr[2], row)
    if kind == "or":
        return matches(expr[1], row) or matches(expr[2], row)
    return _lookup(expr[1], row) == _lookup(expr[2], row)


def _lookup(value: tuple, row: dict) -> str:
    kind, text = value
    if kind == "literal":
        return text
    if text not in row:
        raise XapiError("INTERNAL_ERROR", "missing field", text, "")
    return row[text]


def db_row(cls: str, ref: str, record: dict) -> dict[str, str]:
    """A record as xapi's database row: DB column names, values in their stored string form."""
    row = {REF_COLUMN: ref}
    for name, value in record.items():
        row[column(cls, name)] = db_string(value)
    return row


def column(cls: str, field: str) -> str:
    for ns in NAMESPACES.get(cls, ()):
        if field.startswith(ns + "_"):
            return f"{ns}__{field[len(ns) + 1:]}"
    return field


def db_string(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "%.16g" % value
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.timezone.utc).strftime("%Y%m%dT%H:%M:%SZ")
    if isinstance(value, dict):
        return "(%s)" % " ".join("(%s %s)" % (_sexpr(k), _sexpr(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "(%s)" % " ".join(_sexpr(v) for v in value)
    return str(value)


def _sexpr(value) -> str:
    # SExpr.string_of (String s): single-quoted, with \ and ' escaped
    text = db_string(value)
    return "'%s'" % text.replace("\\", "\\\\").replace("'", "\\'")
