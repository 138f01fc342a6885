"""`tinabs beat [--name NAME] [--print] [-- CELERY_ARGS...]`: the schedules' Celery beat.

Checks the config, then replaces itself (exec) with

    celery -A tinabs_tasks beat -S tinabs_tasks.schedule.beat_scheduler:Scheduler -l info --enable-remote-control -n NAME@%h

RedBeat keeps the schedule in Redis and holds a lock there, so a second beat started by mistake
waits instead of sending every task twice.  Remote control makes beat answer
`celery -A tinabs_tasks inspect ping -d NAME@HOST`, which is its health check.  Beat never logs in
to a pool: it needs the broker, not the pool passwords.
"""
from __future__ import annotations

from tinabs_tasks.cli.common import UserError, load_config
from tinabs_tasks.cli.worker import CELERY, exec_celery

SCHEDULER = "tinabs_tasks.schedule.beat_scheduler:Scheduler"
RECOMMENDED = ("-l", "info", "--enable-remote-control")
OWN_OPTIONS = ("-A", "--app", "-S", "--scheduler", "-n", "--hostname")


def add_arguments(parser) -> None:
    parser.add_argument("--name", default="celerybeat", help="node name, NAME@%%h (default: celerybeat)")
    parser.add_argument("--print", action="store_true", dest="print_only",
                        help="print the celery command line instead of running it")
    parser.add_argument("celery_args", nargs="*", metavar="-- CELERY_ARGS",
                        help="more `celery beat` options, after `--` (e.g. -- --max-interval 60)")


def command_line(args) -> list[str]:
    for arg in args.celery_args:
        option = arg.split("=", 1)[0] if arg.startswith("--") else arg[:2]
        if option in OWN_OPTIONS:
            raise UserError(f"`{arg}` after `--` is not allowed here: tinabs beat sets it (--name for -n)")
    name = args.name if "@" in args.name else f"{args.name}@%h"
    return [*CELERY, "beat", "-S", SCHEDULER, "-n", name, *RECOMMENDED, *args.celery_args]


def run(args) -> int:
    load_config(args)  # a config mistake is one line here, not Celery's traceback
    return exec_celery(command_line(args), args.print_only)
