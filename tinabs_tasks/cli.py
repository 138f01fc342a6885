"""The ``tinabs`` command."""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinabs", description="Skeleton backups of XenServer / XCP-ng VMs.")
    commands = parser.add_subparsers(dest="command", required=True)
    from .sim import main as sim_main
    sim = commands.add_parser("sim", help="run the XAPI simulator in the foreground")
    sim_main.add_arguments(sim)
    sim.set_defaults(run=sim_main.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
