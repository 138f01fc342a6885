"""`tinabs restore BACKUP --pool P [--sr SR] [--name NAME] [--keep-macs|--new-macs] [--start] [--local]`.

BACKUP is a backup's data file or manifest inside the destination, or a repository
backup's id (``<stamp>-<run>``; its XVA is rebuilt from the repository by the worker,
which opens it with its own config's key).  By default
the restore is sent as the `tinabs.restore` task to the pool's queue and
followed until it ends; `--local` runs it in this process.  Exit status: 0
restored, 1 the restore failed (nothing is left behind; the reason is printed),
2 a usage or config error.
"""
from __future__ import annotations

import json
import sys
import time

from tinabs_tasks.restore import into_pool as restore
from tinabs_tasks.cli.common import UserError, human_bytes, job_store, load_config, printable

NO_WORKER_HINT_S = 30


def add_arguments(parser) -> None:
    parser.add_argument("backup", help="the backup: its .xva / .metadata.xva file or its .json manifest, "
                                       "or a repository backup's id")
    parser.add_argument("--pool", required=True, help="the pool to restore into")
    parser.add_argument("--sr", help="SR (name or uuid) for the disks (default: the pool's shared_sr; "
                                     "sr-copy: a clone beside the kept copy on the backup SR)")
    parser.add_argument("--name", help="name of the restored VM (default: '<name> (restored <UTC stamp>)')")
    macs = parser.add_mutually_exclusive_group()
    macs.add_argument("--keep-macs", dest="macs", action="store_const", const="keep",
                      help="keep the original MACs even if the original VM still exists")
    macs.add_argument("--new-macs", dest="macs", action="store_const", const="new",
                      help="always give the VIFs new MACs")
    parser.set_defaults(macs="auto")
    parser.add_argument("--start", action="store_true", help="start the restored VM")
    parser.add_argument("--local", action="store_true", help="run the restore in this process, not on a worker")
    parser.add_argument("--no-wait", action="store_true", help="send the task and print its id")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--timeout", type=float, default=0, help="give up waiting after this many seconds")


def run(args) -> int:
    cfg = load_config(args)
    if args.pool not in cfg.pools:
        raise UserError(f"unknown pool `{args.pool}`; configured pools: {', '.join(sorted(cfg.pools))}")
    problem = restore.name_problem(args.name) if args.name is not None else None
    if problem:
        raise UserError(f"--name {problem}")
    try:  # a repo backup's repository is opened where the restore runs (the worker: its key)
        backup = restore.load_backup(cfg.destination, args.backup)
        restore.check_pool(backup, args.pool)
    except restore.BadBackup as exc:
        raise UserError(str(exc)) from None
    if not args.local:
        job_store(cfg)  # a clear message when the broker is unreachable, before anything is said
    options = {"sr": args.sr, "name": args.name, "macs": args.macs, "start": args.start}
    run_id = restore.new_run_id()
    say = (lambda *_: None) if args.json else (lambda text: print(text, flush=True))
    source = backup["path"] or f"repository backup {backup['backup_id']}"
    say(f"restoring {printable(backup['manifest']['vm']['name'])} ({backup['mode']}) from {printable(source)} "
        f"into pool {args.pool} (run {run_id})")
    if args.local:
        return _local(cfg, backup, args, options, run_id, say)
    from tinabs_tasks.runs import requests  # sent by name: this process needs only the broker
    result = requests.restore(args.pool, backup["manifest_path"], options, run_id)
    if args.no_wait:
        print(json.dumps({"task": result.id, "run": run_id}) if args.json else f"restore task {result.id} queued")
        return 0
    return _follow(result, args, say)


def _local(cfg, backup, args, options, run_id, say) -> int:
    from tinabs_tasks.xapi.errors import classify
    progress = _Progress(say)
    try:
        result = restore.run_restore(cfg, backup["manifest_path"], args.pool, run=run_id, report=progress, **options)
    except restore.BadBackup as exc:
        raise UserError(str(exc)) from None
    except Exception as exc:
        reason = str(exc) if isinstance(exc, restore.RestoreFailed) else str(classify(exc, args.pool))
        return _failed(reason, args)
    return _done(result, args, say)


def _follow(result, args, say) -> int:
    progress = _Progress(say)
    began = time.monotonic()
    hinted = False
    while not result.ready():
        if result.state == "PROGRESS" and isinstance(result.info, dict):
            progress(**result.info)
        elapsed = time.monotonic() - began
        if args.timeout and elapsed > args.timeout:
            print(f"tinabs: gave up waiting after {args.timeout:.0f}s; restore task {result.id} goes on",
                  file=sys.stderr)
            return 1
        if not hinted and elapsed > NO_WORKER_HINT_S and result.state == "PENDING":
            say(f"  (no worker has taken the restore yet: is a worker serving tinabs.pool.{args.pool}?)")
            hinted = True
        time.sleep(0.2)
    if result.successful():
        return _done(result.result, args, say)
    return _failed(str(result.result), args)


def _done(result: dict, args, say) -> int:
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    say(f"restored as `{printable(result['name'])}` ({result['uuid']}), {result.get('power_state', '?')}")
    if "macs" in result:
        say(f"  MACs: {result['macs']} ({result['mac_reason']})")
    for d in result.get("disks", []):
        say(f"  disk {d['userdevice']}: {d['uuid']} on {d['SR']} ({human_bytes(d['virtual_size'])})")
    return 0


def _failed(reason: str, args) -> int:
    if args.json:
        print(json.dumps({"ok": False, "error": reason}))
    # the worker's reason may already say it (its task fails with "restore failed: ..."): once is enough
    reason = reason.removeprefix("restore failed: ")
    print(f"tinabs: restore failed: {printable(reason)}; nothing of it was left on the pool", file=sys.stderr)
    return 1


class _Progress:
    def __init__(self, say):
        self.say, self.last, self.last_t = say, None, 0.0

    def __call__(self, stage: str = "", progress=None, bytes=None, total=None, **_):
        now = time.monotonic()
        line = f"  {stage}"
        if bytes is not None:
            line += f" {human_bytes(bytes)}" + (f" of {human_bytes(total)}" if total else "")
        elif progress is not None:
            line += f" {progress * 100:.0f}%"
        if stage != self.last or now - self.last_t > 2:
            self.say(line)
            self.last, self.last_t = stage, now
