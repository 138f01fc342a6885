"""`tinabs worker [--pools a,b] [--concurrency N] [--name NAME] [--with-default-queue] [--print]
[-- CELERY_ARGS...]`: a Celery worker for the pools this host can reach.

It checks the pools against the config (an unknown pool is one line, exit 2), works out the
queues and replaces itself (exec: the same PID, so systemd and Docker signal Celery directly) with

    celery -A tinabs_tasks worker -Q QUEUES -c N -n NAME@%h -l info --without-gossip --without-mingle

Routing: every task of a pool (plan, the stages, compensate, restore, prune_vm, janitor) goes to
the queue ``tinabs.pool.<pool>``, so a worker takes exactly the pools it can reach.  The default
queue ``tinabs`` carries what is no one pool's: beat's scheduled_backup (which starts the nightly
job), reports, the fan-outs prune, janitor_all and verify, and the repository's GC (repo_gc).  A worker without --pools takes it
along with every pool's queue; a pinned worker only with --with-default-queue, since verify reads
the whole destination and checks sr-copy disks on every pool.  Some worker must take it.

Gossip and mingle are off: tinabs revokes nothing and Flower needs neither, and with many workers
each one would otherwise hear every other's heartbeats.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys

from tinabs_tasks.cli.common import UserError, load_config

#: app.DEFAULT_QUEUE (tested equal): importing the app here would build it for `tinabs --help` too
DEFAULT_QUEUE = "tinabs"
CELERY = (sys.executable, "-m", "celery", "-A", "tinabs_tasks")
RECOMMENDED = ("-l", "info", "--without-gossip", "--without-mingle")
#: chosen by this command's own options; given again after `--` they would contradict them
OWN_OPTIONS = {"-A": "", "--app": "", "-Q": "--pools", "--queues": "--pools", "-X": "--pools",
               "--exclude-queues": "--pools", "-c": "--concurrency", "--concurrency": "--concurrency",
               "-n": "--name", "--hostname": "--name"}
#: backup stages wait on pools and the network, not on CPU: more processes than cores
DEFAULT_CONCURRENCY = max(2, 2 * (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                   else os.cpu_count() or 1))


def add_arguments(parser) -> None:
    parser.add_argument("--pools", type=pool_list, metavar="A,B",
                        help="serve only these pools (default: every configured pool and the default queue)")
    parser.add_argument("--concurrency", "-c", type=positive, default=DEFAULT_CONCURRENCY, metavar="N",
                        help=f"worker processes (default: twice the cores, here {DEFAULT_CONCURRENCY})")
    parser.add_argument("--name", help="node name, NAME@%%h (default: `tinabs`, or the pools joined by `+`)")
    parser.add_argument("--with-default-queue", action="store_true",
                        help=f"with --pools: also take the default queue `{DEFAULT_QUEUE}` (scheduled backups, "
                             "reports, prune, janitor, verify, repo_gc)")
    parser.add_argument("--print", action="store_true", dest="print_only",
                        help="print the celery command line instead of running it")
    parser.add_argument("celery_args", nargs="*", metavar="-- CELERY_ARGS",
                        help="more `celery worker` options, after `--` (e.g. -- --max-tasks-per-child 100)")


def pool_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"an empty pool name in {text!r}; give names separated by commas")
    return list(dict.fromkeys(names))


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"a whole number >= 1, got {text!r}")
    return int(text)


def queues(cfg, pools: list[str] | None, with_default: bool) -> list[str]:
    """The pools' queues (each checked against the config), and the default queue when serving all."""
    if pools is None:
        return [DEFAULT_QUEUE] + [cfg.pools[name].queue for name in sorted(cfg.pools)]
    chosen = [cfg.pool(name).queue for name in pools]  # ConfigError names an unknown pool
    return ([DEFAULT_QUEUE] if with_default else []) + chosen


def node_name(name: str | None, pools: list[str] | None) -> str:
    name = name or ("+".join(pools) if pools else "tinabs")
    return name if "@" in name else f"{name}@%h"


def command_line(cfg, args) -> list[str]:
    if args.with_default_queue and args.pools is None:
        raise UserError("--with-default-queue goes with --pools (without it the worker takes every queue)")
    check_passthrough(args.celery_args)
    return [*CELERY, "worker", "-Q", ",".join(queues(cfg, args.pools, args.with_default_queue)),
            "-c", str(args.concurrency), "-n", node_name(args.name, args.pools), *RECOMMENDED, *args.celery_args]


def check_passthrough(extra: list[str]) -> None:
    for arg in extra:
        option = arg.split("=", 1)[0] if arg.startswith("--") else arg[:2]
        if option in OWN_OPTIONS:
            instead = f"use {OWN_OPTIONS[option]}" if OWN_OPTIONS[option] else "tinabs sets it"
            raise UserError(f"`{arg}` after `--` is not allowed here: {instead}")


def exec_celery(argv: list[str], print_only: bool) -> int:
    if print_only:
        print(shlex.join(argv))
        return 0
    sys.stdout.flush()
    os.execv(argv[0], argv)  # never returns


def run(args) -> int:
    cfg = load_config(args)
    return exec_celery(command_line(cfg, args), args.print_only)
