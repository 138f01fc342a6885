"""The one retry policy (runs/retry_policy.decide), as a table: what a stage, compensation, plan or
restore does after each kind of failure, given what it has been through and the [retry] settings.

``decide`` is pure: every case gives it a classified error, the attempts so far, the settings, a
clock and a jitter (``uniform``) that returns 1.0, so each countdown is exact.  Errors come from
``xapi.errors.classify`` of the exceptions the real clients raise (XenAPI.Failure, socket and
HTTP errors, ...), and some are built directly as StageError.
"""
from __future__ import annotations

import errno
import http.client
import socket
import ssl
import xml.parsers.expat
import xmlrpc.client
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
import XenAPI

from tinabs_tasks.config.model import ConfigError
from tinabs_tasks.config.sections import RetryConfig
from tinabs_tasks.runs.retry_policy import (MAX_WAIT_EXPONENT, Attempts, GiveUp, Relogin, Retry, Settings, WaitForPool,
                                            backoff, decide)
from tinabs_tasks.xapi.errors import (ADVICE, RELOGIN_CODES, TRANSIENT_CODES, UNREACHABLE, DestinationError,
                                      StageError, StreamCut, classify)

POOL = "pool-a"
NOW = 10_000.0
DEFAULT = Settings()  # max_retries 5, backoff 2 s .. 120 s, unreachable 900 s, 5 relogins, patience 1
PATIENT = Settings(patience=2.0)  # compensation


def one(_a, _b):
    """The jitter fixed at 1.0: a countdown is exactly backoff_base_s * 2**failures (capped)."""
    return 1.0


def failure(*details) -> StageError:
    return classify(XenAPI.Failure(list(details)), POOL)


def ssl_untrusted() -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, "certificate verify failed")
    exc.verify_message = "self-signed certificate"
    return exc


def expat_error() -> xml.parsers.expat.ExpatError:
    try:
        xmlrpc.client.loads("<?xml version='1.0'?><methodResponse><params><param>")
    except xml.parsers.expat.ExpatError as exc:
        return exc
    raise AssertionError("a cut-off XML-RPC answer parsed")


@dataclass
class Case:
    id: str
    error: StageError
    attempts: Attempts
    want: type
    settings: Settings = DEFAULT
    countdown: float | None = None
    reason: str | None = None  #: a part of the decision's reason (Retry, WaitForPool, GiveUp)
    drop: bool | None = None
    extra: dict = field(default_factory=dict)  #: other fields of the decision, exactly


A0 = Attempts()
CASES = [
    # -- SESSION_INVALID: log in again at once, up to max_relogins; then a transient like any other
    Case("session-invalid-first-relogin", failure("SESSION_INVALID", "OpaqueRef:s"), A0, Relogin, countdown=0.0,
         drop=True),
    Case("session-invalid-last-relogin", failure("SESSION_INVALID"), Attempts(relogins=4), Relogin, drop=True),
    Case("session-invalid-relogins-not-failures", failure("SESSION_INVALID"), Attempts(failures=5, relogins=4),
         Relogin, drop=True),
    Case("session-invalid-relogins-used-up-retried", failure("SESSION_INVALID"), Attempts(relogins=5), Retry,
         countdown=2.0, reason="SESSION_INVALID", drop=True),
    Case("session-invalid-relogins-used-up-backoff", failure("SESSION_INVALID"), Attempts(failures=3, relogins=5),
         Retry, countdown=16.0, drop=True),
    Case("session-invalid-relogins-and-retries-used-up", failure("SESSION_INVALID"),
         Attempts(failures=5, relogins=5), GiveUp, reason="SESSION_INVALID (gave up after 5 retries)", drop=True),
    Case("session-invalid-no-relogins-allowed", failure("SESSION_INVALID"), A0, Retry,
         settings=Settings(max_relogins=0), countdown=2.0, drop=True),
    Case("session-invalid-direct", StageError("expired", True, "SESSION_INVALID"), Attempts(relogins=2), Relogin),

    # -- UNREACHABLE: waited for in time (unreachable_wait_s x patience), not in retries
    Case("unreachable-refused-starts-waiting", classify(ConnectionRefusedError(errno.ECONNREFUSED, "refused"), POOL),
         A0, WaitForPool, countdown=2.0, reason="(waiting for the pool: 0s of 900s)", drop=True,
         extra={"since": NOW, "waited_s": 0.0}),
    Case("unreachable-timeout-keeps-waiting", classify(socket.timeout("timed out"), POOL),
         Attempts(failures=2, unreachable_since=NOW - 899), WaitForPool, countdown=8.0,
         reason="(waiting for the pool: 899s of 900s)", drop=True, extra={"since": NOW - 899, "waited_s": 899.0}),
    Case("unreachable-no-route", classify(OSError(errno.EHOSTUNREACH, "No route to host"), POOL),
         Attempts(unreachable_since=NOW - 10), WaitForPool, extra={"since": NOW - 10, "waited_s": 10.0}),
    Case("unreachable-reset", classify(ConnectionResetError(errno.ECONNRESET, "reset"), POOL), A0, WaitForPool),
    Case("unreachable-remote-disconnected", classify(http.client.RemoteDisconnected("closed"), POOL), A0,
         WaitForPool),
    Case("unreachable-dns", classify(socket.gaierror(-2, "Name or service not known"), POOL), A0, WaitForPool),
    Case("unreachable-waits-past-max-retries", classify(TimeoutError(), POOL),
         Attempts(failures=50, unreachable_since=NOW - 100), WaitForPool, countdown=120.0, drop=True),
    Case("unreachable-wait-exponent-capped",
         StageError("pool `pool-a`: cannot reach the pool", True, UNREACHABLE), Attempts(failures=20), WaitForPool,
         settings=Settings(backoff_base_s=0.1, backoff_max_s=1000.0), countdown=0.1 * 2 ** MAX_WAIT_EXPONENT),
    Case("unreachable-gives-up-at-the-limit", classify(ConnectionRefusedError(), POOL),
         Attempts(unreachable_since=NOW - 900), GiveUp, reason="(unreachable for 900s)", drop=True),
    Case("unreachable-gives-up-after-the-limit", classify(ConnectionRefusedError(), POOL),
         Attempts(unreachable_since=NOW - 1234.4), GiveUp, reason="(unreachable for 1234s)", drop=True),
    Case("unreachable-patience-keeps-waiting", classify(ConnectionRefusedError(), POOL),
         Attempts(unreachable_since=NOW - 1799), WaitForPool, settings=PATIENT,
         reason="(waiting for the pool: 1799s of 1800s)"),
    Case("unreachable-patience-gives-up", classify(ConnectionRefusedError(), POOL),
         Attempts(unreachable_since=NOW - 1800), GiveUp, settings=PATIENT, reason="(unreachable for 1800s)",
         drop=True),
    Case("unreachable-short-wait-setting", classify(ConnectionRefusedError(), POOL),
         Attempts(unreachable_since=NOW - 30), GiveUp, settings=Settings(unreachable_wait_s=30),
         reason="(unreachable for 30s)"),

    # -- transient: backoff_base_s * 2**failures, capped at backoff_max_s, up to max_retries (x patience)
    *[Case(f"transient-{code}-backoff-{n}", failure(code, "detail"), Attempts(failures=n), Retry,
           countdown=2.0 * 2 ** n, reason=code, drop=code in RELOGIN_CODES)
      for code, n in (("OTHER_OPERATION_IN_PROGRESS", 0), ("VDI_IN_USE", 1), ("TOO_MANY_PENDING_TASKS", 2),
                      ("HOST_OFFLINE", 3), ("INTERNAL_ERROR", 4))],
    Case("transient-backoff-capped", failure("VDI_IO_ERROR"), Attempts(failures=6), Retry,
         settings=Settings(max_retries=10), countdown=120.0),
    Case("transient-backoff-cap-setting", failure("EVENTS_LOST"), Attempts(failures=3), Retry,
         settings=Settings(backoff_base_s=5.0, backoff_max_s=30.0), countdown=30.0),
    Case("transient-sr-backend-prefix", failure("SR_BACKEND_FAILURE_46", "", "The VDI is not available"), A0, Retry,
         countdown=2.0, drop=False),
    Case("transient-host-is-slave-drops-session", failure("HOST_IS_SLAVE", "10.0.0.2"), Attempts(failures=1), Retry,
         countdown=4.0, drop=True),
    Case("transient-network-broken-pipe", classify(BrokenPipeError(errno.EPIPE, "Broken pipe"), POOL), A0, Retry,
         countdown=2.0, reason="cannot reach the pool", drop=True),
    Case("transient-network-http", classify(http.client.IncompleteRead(b"x"), POOL), Attempts(failures=2), Retry,
         countdown=8.0, drop=True),
    Case("transient-network-eof", classify(EOFError(), POOL), A0, Retry, drop=True),
    Case("transient-answer-cut-off", classify(expat_error(), POOL), A0, Retry, reason="answer was cut off",
         drop=True),
    Case("transient-stream-cut", classify(StreamCut("no end marker"), POOL), Attempts(failures=1), Retry,
         countdown=4.0, reason="transfer cut short", drop=False),
    Case("transient-xmlrpc-fault", classify(xmlrpc.client.Fault(1, "boom"), POOL), A0, Retry, drop=False),
    Case("transient-direct", StageError("the pool is busy", True, "SOMETHING_NEW"), Attempts(failures=4), Retry,
         countdown=32.0, reason="the pool is busy", drop=False),
    Case("transient-last-retry", failure("VDI_IN_USE"), Attempts(failures=4), Retry),
    Case("transient-gives-up-after-max-retries", failure("VDI_IN_USE", "OpaqueRef:v"), Attempts(failures=5), GiveUp,
         reason="VDI_IN_USE ['OpaqueRef:v'] (gave up after 5 retries)", drop=False),
    Case("transient-network-gives-up-drops-session", classify(BrokenPipeError(), POOL), Attempts(failures=5), GiveUp,
         reason="(gave up after 5 retries)", drop=True),
    Case("transient-patience-retries-longer", failure("VDI_IN_USE"), Attempts(failures=9), Retry, settings=PATIENT,
         countdown=120.0),
    Case("transient-patience-gives-up", failure("VDI_IN_USE"), Attempts(failures=10), GiveUp, settings=PATIENT,
         reason="(gave up after 10 retries)"),
    Case("transient-patience-rounds-down", failure("VDI_IN_USE"), Attempts(failures=7), GiveUp,
         settings=Settings(patience=1.5), reason="(gave up after 7 retries)"),
    Case("transient-no-retries-allowed", failure("VDI_IN_USE"), A0, GiveUp, settings=Settings(max_retries=0),
         reason="(gave up after 0 retries)"),

    # -- permanent: given up on at once, with the advice, never "gave up after"
    Case("permanent-bad-password", failure("SESSION_AUTHENTICATION_FAILED", "root", "bad"), A0, GiveUp,
         reason=ADVICE["SESSION_AUTHENTICATION_FAILED"], drop=False),
    Case("permanent-handle-invalid", failure("HANDLE_INVALID", "VM", "OpaqueRef:x"), A0, GiveUp,
         reason="HANDLE_INVALID", drop=False),
    Case("permanent-template", failure("VM_IS_TEMPLATE"), A0, GiveUp, reason=ADVICE["VM_IS_TEMPLATE"]),
    Case("permanent-sr-full", failure("SR_FULL", "100", "10"), A0, GiveUp, reason="SR_FULL"),
    Case("permanent-unknown-code", failure("NO_SUCH_THING"), A0, GiveUp, reason="NO_SUCH_THING", drop=False),
    Case("permanent-empty-failure", classify(XenAPI.Failure([]), POOL), A0, GiveUp, reason="UNKNOWN"),
    Case("permanent-tls", classify(ssl_untrusted(), POOL), A0, GiveUp, reason="TLS certificate not trusted",
         drop=False),
    Case("permanent-config", classify(ConfigError("no pool `x`"), POOL), A0, GiveUp, reason="worker config"),
    Case("permanent-destination", classify(DestinationError("disk full"), POOL), A0, GiveUp, reason="disk full"),
    Case("permanent-bug", classify(ZeroDivisionError("division by zero"), POOL), A0, GiveUp,
         reason="unexpected ZeroDivisionError"),
    Case("permanent-direct", StageError("nothing to do about it", False, "HANDLE_INVALID"), A0, GiveUp,
         reason="nothing to do about it"),
    Case("permanent-even-with-retries-left", failure("UUID_INVALID"), Attempts(failures=1, relogins=1), GiveUp),
    Case("permanent-network-code-still-drops", StageError("gone for good", False, "NETWORK"), A0, GiveUp, drop=True),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_decide(case: Case):
    decision = decide(case.error, case.attempts, case.settings, NOW, uniform=one)
    assert type(decision) is case.want, (decision, case.error.code, str(case.error))
    if case.countdown is not None:
        assert decision.countdown == pytest.approx(case.countdown), decision
    if case.reason is not None:
        assert case.reason in decision.reason, decision
    if case.drop is not None:
        assert decision.drop_session is case.drop, decision
    for name, value in case.extra.items():
        assert getattr(decision, name) == pytest.approx(value), (name, decision)
    if isinstance(decision, GiveUp):
        # the reason shown everywhere names the error itself; only a retryable one says it gave up
        assert decision.reason.startswith(str(case.error))
        assert ("(gave up after" in decision.reason) == (case.error.transient and case.error.code != UNREACHABLE)


#: every code classify gives, and a few it never sees
ALL_CODES = sorted(TRANSIENT_CODES | RELOGIN_CODES | set(ADVICE) |
                   {"STREAM_CUT", "FAULT", "TLS", "CONFIG", "DESTINATION", "BUG", "SR_BACKEND_FAILURE_46"})
#: fresh, half-way, and used up on every count
ATTEMPTS = [A0, Attempts(failures=2, relogins=2, unreachable_since=NOW - 60),
            Attempts(failures=5, relogins=5, unreachable_since=NOW - 10_000)]


@pytest.mark.parametrize("transient", [True, False], ids=["transient", "permanent"])
@pytest.mark.parametrize("code", ALL_CODES)
def test_the_session_is_dropped_exactly_for_the_relogin_codes(code, transient):
    """Given an error of any code, retryable or not, at any point of its step
    Then the decision drops the cached session exactly when the code is one of RELOGIN_CODES."""
    for attempts in ATTEMPTS:
        for settings in (DEFAULT, PATIENT):
            decision = decide(StageError("x", transient, code), attempts, settings, NOW, uniform=one)
            assert decision.drop_session is (code in RELOGIN_CODES), (code, attempts, decision)


def test_the_relogin_codes_are_codes_classify_gives():
    """The codes that drop the session are the ones a network failure, an unreachable pool, an
    expired session and a moved master are classified as."""
    got = {classify(BrokenPipeError(), POOL).code, classify(ConnectionRefusedError(), POOL).code,
           failure("SESSION_INVALID").code, failure("HOST_IS_SLAVE", "10.0.0.2").code}
    assert got == RELOGIN_CODES


def test_a_classified_error_is_classified_once():
    err = StageError("already classified", True, "VDI_IN_USE")
    assert classify(err, POOL) is err


@pytest.mark.parametrize("failures,base", [(0, 2.0), (1, 4.0), (5, 64.0), (6, 120.0), (30, 120.0)])
def test_the_jitter_is_half_to_one_and_a_half_of_the_backoff(failures, base):
    """Given the real jitter's bounds (uniform(0.5, 1.5)) and random draws
    Then each countdown lies within half and one and a half times the capped backoff."""
    seen = []
    assert backoff(failures, DEFAULT, uniform=lambda a, b: seen.append((a, b)) or b) == pytest.approx(base * 1.5)
    assert backoff(failures, DEFAULT, uniform=lambda a, b: a) == pytest.approx(base * 0.5)
    assert seen == [(0.5, 1.5)]
    draws = [decide(failure("VDI_IN_USE"), Attempts(failures=failures), Settings(max_retries=50), NOW).countdown
             for _ in range(200)]
    assert all(0.5 * base <= d <= 1.5 * base for d in draws), (min(draws), max(draws))
    assert len(set(draws)) > 1  # really jittered


def test_settings_come_from_the_retry_table():
    """Given a [retry] table
    Then the policy's settings are its numbers, with the default relogins and the patience asked for."""
    cfg = RetryConfig(max_retries=3, backoff_base_s=1.5, backoff_max_s=60.0, unreachable_wait_s=300.0)
    s = Settings.of(cfg, patience=2.0)
    assert (s.max_retries, s.backoff_base_s, s.backoff_max_s, s.unreachable_wait_s, s.max_relogins, s.patience) == \
        (3, 1.5, 60.0, 300.0, DEFAULT.max_relogins, 2.0)
    assert Settings.of(SimpleNamespace(max_retries=1, backoff_base_s=1, backoff_max_s=1, unreachable_wait_s=1)).patience \
        == 1.0
