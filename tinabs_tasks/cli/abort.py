"""`tinabs abort JOB [--wait]`: stop a running job and leave its pools clean (abort.py says how)."""
from __future__ import annotations

import getpass

from tinabs_tasks.cli.common import UserError, job_store, load_config
from tinabs_tasks.cli.status import render


def add_arguments(parser) -> None:
    parser.add_argument("job", help="the job id (`tinabs status` lists recent jobs)")
    parser.add_argument("--wait", action="store_true", help="wait until every run has stopped and been cleaned up")
    parser.add_argument("--timeout", type=float, default=0, help="with --wait: give up after this many seconds")


def run(args) -> int:
    store = job_store(load_config(args))
    job = store.job(args.job)
    if job is None:
        raise UserError(f"no job {args.job!r} (`tinabs status` lists recent ones)")
    if job["done"]:
        print(f"job {args.job} has already ended; nothing to abort")
        return 0
    store.abort(args.job, by=f"{_user()} (cli)")
    print(f"job {args.job}: abort requested; its runs stop at once or at their next stage, and what they "
          "made is removed", flush=True)
    if not args.wait:
        return 0
    from tinabs_tasks.cli.backup import follow
    job = follow(store, args.job, quiet=False, timeout=args.timeout)
    print("\n" + render(job))
    return 0 if job["done"] else 1


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        return "unknown user"
