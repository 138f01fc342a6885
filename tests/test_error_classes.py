"""What a failure of a call to a pool counts as: retried (transient) or given up on (permanent)."""
from __future__ import annotations

import xmlrpc.client

import pytest
import XenAPI

from tinabs_tasks.xapi.errors import UNREACHABLE, classify


def _raised(call):
    try:
        call()
    except Exception as exc:  # the exception a real client call raised
        return exc
    raise AssertionError("no error")


@pytest.mark.parametrize("reply", ["", "<?xml version='1.0'?><methodResponse><params><param>"])
def test_an_xmlrpc_answer_cut_off_is_a_network_failure_retried(reply):
    # what xmlrpc.client raises for an empty or half answer (a master going down mid-reply)
    err = classify(_raised(lambda: xmlrpc.client.loads(reply)), "pool-a")
    assert err.transient and err.code == "NETWORK" and "answer was cut off" in str(err), err


def test_a_refused_connection_is_waited_for_and_a_refused_login_is_not_retried():
    assert classify(ConnectionRefusedError(111, "refused"), "p").code == UNREACHABLE
    err = classify(XenAPI.Failure(["SESSION_AUTHENTICATION_FAILED", "root", "bad"]), "p")
    assert not err.transient


def test_an_unknown_error_is_permanent_and_named():
    err = classify(ZeroDivisionError("x"), "p")
    assert not err.transient and err.code == "BUG" and "ZeroDivisionError" in str(err)
