"""Query messages xapi serves but does not document: ``<class>.get_all_records_where(expr)``
and ``<class>.get_all_where(expr)`` (datamodel_utils.ml: generated for every class with
get_all, hidden from the docs), with xapi's filter language (ocaml/database/db_filter_lex.mll,
db_filter_parse.mly, db_filter.ml), and the host clock (xapi_host.ml get_servertime,
get_server_localtime), through the real XenAPI client.
"""
from __future__ import annotations

import datetime as dt
import xmlrpc.client

import pytest
import XenAPI

from helpers import xapi_http as H


@pytest.fixture(scope="module")
def x(sim):
    return H.api(sim.session(0))


@pytest.fixture(scope="module")
def vms(x):
    """Two clones of our own, with names nobody else has."""
    source = next(ref for ref, rec in H.user_vms(x).items() if rec["power_state"] == "Halted")
    a, b = x.VM.clone(source, "where alpha"), x.VM.clone(source, "where beta")
    x.VM.add_tags(a, "where-tag")
    x.VM.set_other_config(b, {"where-key": "v"})
    return a, b


def where(x, expr, cls="VM"):
    return sorted(getattr(x, cls).get_all_where(expr))


def test_records_where_a_field_equals_a_literal(x, vms):
    """db_cache_impl.ml find_refs_with_filter: a field is a database column, so the API's
    name_label is the column "name__label" (datamodel.ml namespace "name"); the result is a
    map ref -> record, as get_all_records."""
    a, _ = vms
    records = x.VM.get_all_records_where('field "name__label" = "where alpha"')
    assert records == {a: x.VM.get_record(a)}
    assert x.VM.get_all_where('field "name__label" = "where alpha"') == [a]
    assert x.VM.get_all_where('"where alpha" = field "name__label"') == [a], "either side may be the field"


def test_and_or_not_true_false_and_parentheses(x, vms):
    """db_filter_parse.mly: and/or share one precedence, grouping left; "not" is declared
    before them so it takes the whole and/or chain after it; true/false are constants."""
    a, b = vms
    alpha, beta = 'field "name__label" = "where alpha"', 'field "name__label" = "where beta"'
    assert where(x, f"{alpha} or {beta}") == sorted([a, b])
    assert where(x, f"{alpha} and {beta}") == []
    assert where(x, f'{alpha} and field "uuid" = "{x.VM.get_uuid(a)}"') == [a]
    assert where(x, f"({alpha} or {beta}) and not {beta}") == [a]
    everything = sorted(x.VM.get_all())
    assert where(x, "true") == everything and where(x, "false") == []
    assert where(x, f"not {alpha}") == sorted(set(everything) - {a})
    # "not A or B" is "not (A or B)", not "(not A) or B"
    assert where(x, f"not {alpha} or {beta}") == sorted(set(everything) - {a, b})
    # a or b and c is (a or b) and c
    assert where(x, f"{alpha} or {beta} and false") == []


def test_columns_hold_the_database_string_of_each_value(x, vms):
    """Schema.Value.marshal: bools true/false, ints decimal, refs as they are, sets and maps as
    s-expressions; "_ref" (Db_names.ref) is the row's own reference; whitespace is space, tab
    or newline."""
    a, b = vms
    assert a in where(x, 'field "is_a_template" = "false"')
    assert where(x, f'field "_ref" = "{b}"') == [b]
    assert where(x, "field \"tags\" = \"('where-tag')\"") == [a]
    assert where(x, "field \"other_config\"\t=\n\"(('where-key' 'v'))\"") == [b]
    memory = x.VM.get_memory_static_max(a)
    assert a in where(x, f'field "memory__static_max" = "{memory}"')
    host = x.host.get_all()[0]
    assert x.host.get_all_where(f'field "API_version__major" = "{x.host.get_API_version_major(host)}"')


@pytest.mark.parametrize("expr, error", [
    ('field "name__label" = ', "Stdlib.Parsing.Parse_error"),
    ('field "name__label"', "Stdlib.Parsing.Parse_error"),
    ('(true', "Stdlib.Parsing.Parse_error"),
    ('true true', "Stdlib.Parsing.Parse_error"),
    ("", "Stdlib.Parsing.Parse_error"),
    ("name_label = 'x'", 'Failure("lexing: empty token")'),
    ('field "a" == "b"', "Stdlib.Parsing.Parse_error"),
    ('true;', 'Failure("lexing: empty token")'),
])
def test_a_bad_expression_is_invalid_value(x, expr, error):
    """exnHelper.ml: Db_filter.Expression_error (expr, exn) -> INVALID_VALUE [expr,
    Printexc.to_string exn] (the parser's Parse_error, or the lexer's Failure)."""
    with pytest.raises(XenAPI.Failure) as err:
        x.VM.get_all_records_where(expr)
    assert err.value.details == ["INVALID_VALUE", expr, error]


def test_a_field_the_table_lacks_fails_when_a_row_is_tested(x, vms):
    """Row.find raises DBCache_NotFound ("missing field", column, ""): exnHelper.ml makes it
    INTERNAL_ERROR with those three; the API name "name_label" is not a column.  and/or stop
    early (OCaml && / ||), so a missing column nobody reads is no error."""
    with pytest.raises(XenAPI.Failure) as err:
        x.VM.get_all_where('field "name_label" = "where alpha"')
    assert err.value.details == ["INTERNAL_ERROR", "missing field", "name_label", ""]
    assert x.VM.get_all_where('false and field "name_label" = "x"') == []


def test_every_class_with_get_all_has_them_and_session_does_not(x):
    """datamodel_utils.ml: the *_where messages come with get_all (expose_get_all_messages_for,
    which leaves out session); arity as any message (gen_server.ml)."""
    task = x.task.create("where task", "")
    assert x.task.get_all_where('field "name__label" = "where task"') == [task]
    assert x.SR.get_all_records_where("true") == x.SR.get_all_records()
    x.task.destroy(task)
    with pytest.raises(XenAPI.Failure) as err:
        x.session.get_all_where("true")
    assert err.value.details == ["MESSAGE_METHOD_UNKNOWN", "session.get_all_where"]
    with pytest.raises(XenAPI.Failure) as err:
        x.VM.get_all_where()
    assert err.value.details == ["MESSAGE_PARAMETER_COUNT_MISMATCH", "VM.get_all_where", "1", "0"]


def test_servertime_is_utc_and_localtime_has_no_zone(x):
    """xapi_host.ml get_servertime: Date.now, written by date.ml to_rfc3339 as
    YYYYMMDDTHH:MM:SSZ; get_server_localtime: the local wall clock with its zone stripped
    (Date.localtime), written with no suffix.  Neither has an Async form (~flags:[`Session])."""
    host = x.host.get_all()[0]
    utc = x.host.get_servertime(host)
    local = x.host.get_server_localtime(host)
    assert isinstance(utc, xmlrpc.client.DateTime) and isinstance(local, xmlrpc.client.DateTime)
    assert len(utc.value) == 18 and utc.value.endswith("Z") and utc.value[8] == "T"
    assert len(local.value) == 17 and local.value[8] == "T"
    now = dt.datetime.now(dt.timezone.utc)
    parsed = dt.datetime.strptime(utc.value, "%Y%m%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
    assert abs((parsed - now).total_seconds()) < 5
    wall = dt.datetime.strptime(local.value, "%Y%m%dT%H:%M:%S")
    assert abs((wall - dt.datetime.now()).total_seconds()) < 5
    with pytest.raises(XenAPI.Failure) as err:
        x.Async.host.get_servertime(host)
    assert err.value.details[0] == "Fault"
    with pytest.raises(XenAPI.Failure) as err:
        x.host.get_servertime("OpaqueRef:nope")
    assert err.value.details == ["HANDLE_INVALID", "host", "OpaqueRef:nope"]
