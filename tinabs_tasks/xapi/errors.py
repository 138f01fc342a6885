"""Which XAPI and network failures are worth retrying, and what to tell the user."""
from __future__ import annotations

import errno
import http.client
import socket
import ssl
import xml.parsers.expat
import xmlrpc.client

import XenAPI

#: retried with backoff: the pool is busy, restarting, or the network blinked
TRANSIENT_CODES = {
    "SESSION_INVALID", "OTHER_OPERATION_IN_PROGRESS", "VDI_IN_USE", "TOO_MANY_PENDING_TASKS",
    "HOST_OFFLINE", "HOST_STILL_BOOTING", "TASK_CANCELLED", "CLIENT_ERROR", "VDI_IO_ERROR",
    "SR_BACKEND_FAILURE", "EVENTS_LOST", "INTERNAL_ERROR",
    "HOST_IS_SLAVE",  # the master moved (failover): log in again through the new master
}
#: a pool that does not know a message (an older xapi, or one that removed it)
UNKNOWN_MESSAGE_CODES = ("MESSAGE_METHOD_UNKNOWN", "MESSAGE_REMOVED")
#: the pool refuses connections or does not answer at all: waited for in time, not retries
UNREACHABLE = "UNREACHABLE"
#: codes after which the cached session must be dropped and a new login made
RELOGIN_CODES = {"NETWORK", UNREACHABLE, "SESSION_INVALID", "HOST_IS_SLAVE"}
#: errno values that mean "nobody answers there" rather than "the transfer broke"
_UNREACHABLE_ERRNOS = {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN,
                       errno.ETIMEDOUT}
#: what a user should do about a permanent failure
ADVICE = {
    "SESSION_AUTHENTICATION_FAILED": "check the pool's username and its password (password_env, password_file or password_secret)",
    "HANDLE_INVALID": "the object no longer exists (VM deleted or renamed during the backup?)",
    "UUID_INVALID": "the VM no longer exists; refresh the selection",
    "VM_IS_TEMPLATE": "templates are not backed up; remove the tag from the template",
    "SR_FULL": "free space on the SR or point shared_sr/backup_sr at a bigger one",
    "VM_BAD_POWER_STATE": "the VM is in a state that does not allow this operation",
    "PERMISSION_DENIED": "the pool user lacks the role needed for backups (pool-admin)",
    "RBAC_PERMISSION_DENIED": "the pool user lacks the role needed for backups (pool-admin)",
    "SR_OPERATION_NOT_SUPPORTED": "the SR cannot hold new disks; choose another SR in the config",
}


class StageError(Exception):
    """A failure classified for the retry policy, with a message fit for `tinabs status`."""

    def __init__(self, message: str, transient: bool, code: str = ""):
        super().__init__(message)
        self.transient = transient
        self.code = code


class StreamCut(Exception):
    """An HTTP stream from the pool ended before its end marker."""


class DestinationError(Exception):
    """Writing the backup file failed on our side (disk full, permissions): not the pool's fault."""


def classify(exc: BaseException, pool: str) -> StageError:
    from tinabs_tasks.config.model import ConfigError
    if isinstance(exc, StageError):
        return exc
    if isinstance(exc, ConfigError):
        return StageError(f"worker config: {exc}", False, "CONFIG")
    if isinstance(exc, DestinationError):
        return StageError(str(exc), False, "DESTINATION")
    if isinstance(exc, XenAPI.Failure):
        details = [str(d) for d in exc.details] or ["UNKNOWN"]
        code = details[0]
        transient = code in TRANSIENT_CODES or code.startswith("SR_BACKEND_FAILURE")
        text = f"pool `{pool}`: {code}" + (f" {details[1:]}" if len(details) > 1 else "")
        if code in ADVICE:
            text += f" — {ADVICE[code]}"
        return StageError(text, transient, code)
    if isinstance(exc, StreamCut):
        return StageError(f"pool `{pool}`: transfer cut short ({exc}); the partial file was removed", True,
                          "STREAM_CUT")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return StageError(f"pool `{pool}`: TLS certificate not trusted ({exc.verify_message}) — "
                          "set ca_bundle or tls_fingerprint for this pool (or insecure = true, not recommended)",
                          False, "TLS")
    if _unreachable(exc):
        return StageError(f"pool `{pool}`: cannot reach the pool, not answering ({type(exc).__name__}: {exc})", True, UNREACHABLE)
    if isinstance(exc, (ConnectionError, socket.timeout, TimeoutError, http.client.HTTPException,
                        xmlrpc.client.ProtocolError, OSError, EOFError)):
        return StageError(f"pool `{pool}`: cannot reach the pool ({type(exc).__name__}: {exc})", True, "NETWORK")
    if isinstance(exc, xml.parsers.expat.ExpatError):
        # an XML-RPC reply cut off (empty, or half a document): the connection broke mid-answer,
        # as when the master goes down; the call is made again like any network failure
        return StageError(f"pool `{pool}`: its answer was cut off ({exc})", True, "NETWORK")
    if isinstance(exc, xmlrpc.client.Fault):
        return StageError(f"pool `{pool}`: XML-RPC fault {exc.faultString}", True, "FAULT")
    return StageError(f"pool `{pool}`: unexpected {type(exc).__name__}: {exc}", False, "BUG")


def _unreachable(exc: BaseException) -> bool:
    """Connection refused, reset before any answer, no route, or a connect/read timeout."""
    if isinstance(exc, (ConnectionRefusedError, http.client.RemoteDisconnected, socket.timeout, TimeoutError,
                        socket.gaierror)):
        return True
    if isinstance(exc, ConnectionResetError):
        return True  # the host went away mid-call (a transfer cut shows as StreamCut instead)
    return isinstance(exc, OSError) and exc.errno in _UNREACHABLE_ERRNOS
