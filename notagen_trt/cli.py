"""The ``notagen-trt`` command line. Each subcommand lives in ``notagen_trt/commands/`` and
imports only what its stage needs, so the runtime commands work without torch."""

from __future__ import annotations

import argparse
import sys

from notagen_trt.commands import COMMANDS
from notagen_trt.errors import NotaGenError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="notagen-trt", description="Compile NotaGen music models into fast inference engines and run them."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (NotaGenError, ValueError) as exc:
        if args.debug:
            raise
        print(f"notagen-trt {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"notagen-trt {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
