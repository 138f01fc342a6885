"""The ``tinabs`` command: parses arguments, runs one subcommand, turns user mistakes into
one clear line (exit 2) instead of a traceback.

Exit statuses: 0 done, 1 something failed (a backup, a verification, a restore), 2 a usage or
config error (which includes an unreachable broker), 3 nothing matched (`backup --wait`),
130 interrupted.  An error nobody foresaw is one line too (exit 1); ``TINABS_DEBUG=1`` shows its
traceback."""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

#: subcommand -> (module, help)
COMMANDS = {
    "sim": ("tinabs_tasks.sim.main", "run the XAPI simulator in the foreground"),
    "check-config": ("tinabs_tasks.cli.check_config", "validate the config against the pools"),
    "backup": ("tinabs_tasks.cli.backup", "back up VMs (by tag, name or all)"),
    "status": ("tinabs_tasks.cli.status", "show a job's progress and result"),
    "abort": ("tinabs_tasks.cli.abort", "stop a running job; what its runs made is removed"),
    "list": ("tinabs_tasks.cli.list_backups", "list the backups in the destination"),
    "verify": ("tinabs_tasks.cli.verify", "check backups: structure, checksums, skeleton"),
    "restore": ("tinabs_tasks.cli.restore", "restore a backup into a pool"),
    "prune": ("tinabs_tasks.cli.prune", "apply the retention policy"),
    "janitor": ("tinabs_tasks.cli.janitor", "remove litter of dead runs from pools and the destination"),
    "bases": ("tinabs_tasks.cli.bases", "list the bases kept on the pools for incremental backups; forget a VM's"),
    "schedule": ("tinabs_tasks.cli.schedule", "show the schedules beat runs and their next run times"),
    "worker": ("tinabs_tasks.cli.worker", "start a Celery worker for some or all pools"),
    "beat": ("tinabs_tasks.cli.beat", "start Celery beat (schedules, RedBeat)"),
    "web": ("tinabs_tasks.cli.web", "serve the web console (pools, backups, jobs, catalog, restore)"),
    "metrics": ("tinabs_tasks.cli.metrics", "serve tinabs' own figures to Prometheus (/metrics)"),
    "repo": ("tinabs_tasks.cli.repo", "the backup repository: init, key, stats, check, gc, export-xva"),
}


CONFIG_HELP = "config file (default: $TINABS_CONFIG or /etc/tinabs/tinabs.toml)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinabs", description="Skeleton backups of XenServer / XCP-ng VMs.")
    parser.add_argument("--config", help=CONFIG_HELP)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in COMMANDS.items():
        mod = importlib.import_module(module)
        sub = commands.add_parser(name, help=help_text)
        mod.add_arguments(sub)
        _accept_config(sub)
        sub.set_defaults(run=mod.run)
    return parser


def _accept_config(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` after the subcommand too (``tinabs status --config FILE``, ``tinabs schedule
    show --config FILE``): the same ``args.config``; given twice, the last one wins."""
    parser.add_argument("--config", default=argparse.SUPPRESS, help=CONFIG_HELP)  # absent: keep the first
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for nested in action.choices.values():
                _accept_config(nested)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.config:
        os.environ["TINABS_CONFIG"] = args.config  # the Celery app reads it when first imported
    from tinabs_tasks.cli.common import UserError, fail
    from tinabs_tasks.config.model import ConfigError
    try:
        status = args.run(args)
        sys.stdout.flush()  # here, not at exit: a reader gone is seen below, not as "Exception ignored"
        return status
    except BrokenPipeError:
        return reader_gone()
    except (UserError, ConfigError) as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if os.environ.get("TINABS_DEBUG"):
            raise
        return unexpected(exc)


def reader_gone() -> int:
    """The command's reader went away (`tinabs list | head`): end quietly, as a Unix filter killed
    by SIGPIPE does (status 141).  Python ignores SIGPIPE, so the write raised instead; stdout now
    points at /dev/null, so the interpreter's last flush at exit has nowhere to fail."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + signal.SIGPIPE


def unexpected(exc: Exception) -> int:
    """The broker lost mid-command is a clear, common case; anything else is a bug to report."""
    import kombu.exceptions
    import redis
    from tinabs_tasks.cli.common import fail
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError, kombu.exceptions.OperationalError)):
        return fail(f"lost the broker: {exc} — is Redis running, and is broker_url (or TINABS_BROKER_URL) "
                    "right? Jobs already sent go on; `tinabs status` follows them")
    print(f"tinabs: unexpected error: {type(exc).__name__}: {exc} — please report it; "
          "TINABS_DEBUG=1 shows the traceback", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
