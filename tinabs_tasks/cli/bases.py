"""`tinabs bases [--pool P]... [--json]` and `tinabs bases forget VM [--pool P]... [--dry-run]`.

A base is the snapshot of a VM's system disk that a good repo or sr-copy backup leaves on the
pool, so that the next night reads only what differs from it (xapi/bases.py).  They are the only
objects tinabs leaves on a pool on purpose: `tinabs bases` lists them all, with their VM (its
name on the pool, or "(deleted)"), their backup, mode, age, size on the SR and chain, and ends
with how many there are on how many pools and what they take.  `tinabs bases forget VM` destroys
a VM's bases (by name, or uuid: a deleted VM's by uuid), so its next backup is a full one.

Like `tinabs janitor`, this process only talks to the broker: it sends `tinabs.bases` /
`tinabs.bases_forget` to each pool's queue and waits up to --timeout for the answers, which
expire with the wait (a worker that comes back later does not act for nobody).  A pool that
cannot be reached or that no worker answers for is reported by name: exit 1.  Forgetting first
asks every pool which VMs the name means and destroys nothing unless it is exactly one, then
destroys that VM's bases by uuid; a name of several VMs, or of none, is a user mistake: exit 2.
"""
from __future__ import annotations

import argparse
import json
import time

from tinabs_tasks.cli.common import UserError, human_bytes, job_store, load_config, printable

DEFAULT_TIMEOUT_S = 60.0
DELETED = "(deleted)"


def add_arguments(parser) -> None:
    _common(parser)
    sub = parser.add_subparsers(dest="bases_command", metavar="COMMAND")
    forget = sub.add_parser("forget", help="destroy a VM's bases: its next backup is a full one",
                            description="destroy a VM's bases: its next backup is a full one")
    forget.add_argument("vm", metavar="VM", help="the VM's name or uuid (a deleted VM's: its uuid)")
    forget.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    _common(forget, after=True)


def _common(parser, after: bool = False) -> None:
    """--pool, --json, --timeout, before `forget` or after it (there they keep what was given
    before unless given again: their defaults are suppressed)."""
    def default(value):
        return argparse.SUPPRESS if after else value
    parser.add_argument("--pool", action="append", default=default(None),
                        help="only this pool (repeatable; default: every configured pool)")
    parser.add_argument("--json", action="store_true", default=default(False), help="machine-readable output")
    parser.add_argument("--timeout", type=float, default=default(DEFAULT_TIMEOUT_S),
                        help=f"seconds to wait for the pools' workers (default {DEFAULT_TIMEOUT_S:g})")


def _setup(args):
    cfg = load_config(args)
    pools = list(dict.fromkeys(args.pool or cfg.pools))
    for name in pools:
        cfg.pool(name)  # unknown pool: a clear error
    if not pools:
        raise UserError(f"no pools in {cfg.path}: nothing to ask")
    if not args.timeout > 0:
        raise UserError("--timeout must be a number of seconds > 0")
    job_store(cfg)  # a clear message when the broker is down
    return cfg, pools


def collect(cfg, sent: dict, timeout: float) -> dict[str, dict]:
    """Each pool's answer within ``timeout`` (for all of them), or ``{"pool", "error"}``."""
    import celery.exceptions
    deadline = time.monotonic() + timeout
    out = {}
    for pool, result in sent.items():
        try:
            out[pool] = result.get(timeout=max(0.1, deadline - time.monotonic()))
        except celery.exceptions.TimeoutError:
            out[pool] = {"pool": pool, "error": f"no worker answered within {timeout:g}s (is a worker serving "
                                                f"queue {cfg.pool(pool).queue} running?)"}
            continue
        except Exception as exc:  # the task itself failed (a worker's bug): say so, keep the others
            out[pool] = {"pool": pool, "error": f"the worker's task failed: {type(exc).__name__}: {exc}"}
        result.forget()
    return out


# -- tinabs bases ----------------------------------------------------------------------------------
def run(args) -> int:
    if args.bases_command == "forget":
        return run_forget(args)
    cfg, pools = _setup(args)
    from tinabs_tasks.runs import requests  # sent by name: this process needs only the broker
    answers = collect(cfg, {p: requests.bases(p, expires=args.timeout) for p in pools}, args.timeout)
    rows = [r for p in pools for r in answers[p].get("bases", [])]
    errors = [{"pool": p, "error": answers[p]["error"]} for p in pools if answers[p].get("error")]
    summary = {"bases": len(rows), "pools": len({r["pool"] for r in rows}), "pools_asked": len(pools),
               "bytes": sum(int(r.get("physical_utilisation") or 0) for r in rows)}
    if args.json:
        print(json.dumps({"bases": rows, "errors": errors, "summary": summary}, indent=2))
    else:
        print(render(rows, errors, summary))
    return 1 if errors else 0


COLUMNS = ("POOL", "VM", "VM UUID", "BASE (SNAPSHOT UUID)", "BACKUP", "MODE", "SINCE", "SIZE", "CHAIN")


def _cells(r: dict) -> tuple[str, ...]:
    name = DELETED if r.get("vm_name") is None else printable(r["vm_name"])
    return (printable(r["pool"]), name, printable(r.get("vm_uuid") or "?"), printable(r["uuid"]),
            printable(r.get("backup_id")), printable(r.get("mode") or "?"), printable(r.get("since") or "?"),
            human_bytes(r.get("physical_utilisation")), str(r.get("chain", 0)))


def render(rows: list[dict], errors: list[dict], summary: dict) -> str:
    lines = []
    if rows:
        table = [COLUMNS] + [_cells(r) for r in rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    for e in errors:
        lines.append(f"ERROR  pool {e['pool']}: {printable(e['error'])}")
    total = (f"{summary['bases']} base(s) on {summary['pools']} pool(s), {human_bytes(summary['bytes'])} "
             "on the pools' SRs in all")
    if errors:
        total += f" ({len(errors)} of {summary['pools_asked']} pool(s) could not be asked: not counted)"
    lines.append(total)
    return "\n".join(lines)


# -- tinabs bases forget ---------------------------------------------------------------------------
def run_forget(args) -> int:
    wanted = args.vm.strip()
    if not wanted or not wanted.isprintable():
        raise UserError("VM must be a VM's name or uuid (one line of text, not empty)")
    cfg, pools = _setup(args)
    from tinabs_tasks.runs import requests
    asked = collect(cfg, {p: requests.bases_forget(p, wanted, True, expires=args.timeout) for p in pools},
                    args.timeout)
    errors = [{"pool": p, "error": asked[p]["error"]} for p in pools if asked[p].get("error")]
    found = [(p, vm) for p in pools if not asked[p].get("error") for vm in asked[p]["vms"]]
    if len(found) > 1:
        named = ", ".join(f"{printable(vm['name'] or DELETED)} {vm['uuid']} on pool {p}" for p, vm in found)
        raise UserError(f"`{printable(wanted)}` names {len(found)} VMs: {named} — give the VM's uuid"
                        + (" or --pool" if len({p for p, _ in found}) > 1 else ""))
    if not found and not errors:
        raise UserError(f"no VM `{printable(wanted)}` on pool(s) {', '.join(pools)} — give a VM's name or uuid "
                        "(a deleted VM's by its uuid; `tinabs bases` lists the VMs that have bases)")
    if errors and not (found and found[0][1]["uuid"].lower() == wanted.lower()):
        # a name: a pool that did not answer may have a VM of that name too
        where = f"; found on pool {found[0][0]} only among those that answered: give --pool {found[0][0]} or the " \
                "VM's uuid" if found else ""
        return _report(args, None, None, [], errors, f"nothing removed: not every pool could be asked{where}")
    pool, vm = found[0]
    answer = asked[pool]
    if not args.dry_run:
        answer = collect(cfg, {pool: requests.bases_forget(pool, vm["uuid"], False, expires=args.timeout)},
                         args.timeout)[pool]
        if answer.get("error"):
            return _report(args, pool, vm, [], [{"pool": pool, "error": answer["error"]}], "")
    errors = [{"pool": pool, **e} for e in answer.get("errors", [])]
    return _report(args, pool, vm, answer.get("removed", []), errors, _outcome(args, vm, answer, errors),
                   answer.get("running"))


def _who(pool: str, vm: dict) -> str:
    return f"VM {printable(vm['name']) if vm['name'] is not None else DELETED} ({vm['uuid']}) on pool {pool}"


def _outcome(args, vm: dict, answer: dict, errors: list) -> str:
    pool = answer["pool"]
    if not vm.get("bases"):
        return f"{_who(pool, vm)} has no base: nothing to forget (its next backup is a full one anyway)"
    if errors:
        return f"{_who(pool, vm)}: {len(answer.get('removed', []))} base(s) removed, {len(errors)} not"
    if args.dry_run:
        note = f"; a backup of it is running now (run {answer['running']}): wait for its end" \
            if answer.get("running") else ""
        return f"dry run: nothing removed; once forgotten, the {_who(pool, vm)} is backed up in full next time{note}"
    return f"{_who(pool, vm)}: its next backup will be a full one"


def _report(args, pool, vm, removed: list, errors: list, outcome: str, running=None) -> int:
    if args.json:
        print(json.dumps({"pool": pool, "vm": vm and {k: vm[k] for k in ("uuid", "name", "exists")},
                          "dry_run": args.dry_run, "removed": removed, "errors": errors,
                          "running": running, "outcome": outcome}, indent=2))
    else:
        verb = "would remove" if args.dry_run else "removed"
        lines = [f"{verb}  {_who(r['pool'], vm)}: base {r['uuid']}  backup {printable(r['backup_id'])}  "
                 f"{r.get('mode') or '?'}  since {r.get('since') or '?'}  {human_bytes(r.get('physical_utilisation'))}"
                 for r in removed]
        lines += [f"ERROR  pool {e['pool']}: {printable(e['error'])}" for e in errors]
        if outcome:
            lines.append(outcome)
        print("\n".join(lines))
    return 1 if errors else 0
