"""The ``notagen-trt`` command line. Each subcommand lives in ``notagen_trt/commands/`` and
imports only what its stage needs, so the runtime commands work without torch."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

from notagen_trt import allocator
from notagen_trt.commands import COMMANDS
from notagen_trt.errors import NotaGenError
from notagen_trt.files import os_error_line, settle_out_dirs

DEBUG_HELP = "show tracebacks for errors"


class _OneLineParser(argparse.ArgumentParser):
    """A usage error is one line, as every other error is (argparse prints the whole usage block
    first); the subcommands' parsers are of this class too (add_subparsers takes the parent's)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="notagen-trt", description="Compile NotaGen music models into fast inference engines and run them."
    )
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    for subparser in sub.choices.values():  # --debug is accepted after the subcommand too
        subparser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("notagen-trt")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so scratch folders and staged files are removed on the way out."""


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def handler(signum, frame):
        raise Terminated()

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


# The extra of pyproject.toml that brings each package a command may import late.
EXTRAS = {"onnxruntime": "ort", "onnx": "ort", "joblib": "ort", "torch": "export", "safetensors": "export",
          "onnx_ir": "export", "music21": "music", "abctoolkit": "music", "verovio": "music", "unidecode": "music",
          "polygraphy": "verify", "fastapi": "serve", "uvicorn": "serve", "prometheus_client": "serve",
          "httpx": "serve", "ray": "ray", "gradio": "ui", "pretty_midi": "ui", "tensorrt": "trt",
          "tensorrt_rtx": "rtx", "cuda": "rtx"}


def command() -> int:
    """The ``notagen-trt`` command: restarted on jemalloc first where the machine has it
    (allocator.py), then ``main``. A program calling ``main`` keeps its own process."""
    allocator.restart_with_preferred()
    return main()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # said by the subcommand's parser, so that the hint names its --help
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
        commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    rc = 2
    try:
        with _sigterm_unwinds():
            rc = args.func(args)
            return rc
    except ModuleNotFoundError as exc:  # an extra not installed, met deep in a stage: one line, not a traceback
        if args.debug:
            raise
        extra = EXTRAS.get((exc.name or "").split(".")[0])
        how = f"install the toolkit's [{extra}] extra (pip install -e '.[{extra}]' in its checkout)" if extra \
            else "install it"
        print(f"notagen-trt {args.command}: error: this needs the {exc.name} package, which is not installed; {how}",
              file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as Unix tools do
        with contextlib.suppress(OSError, ValueError):  # nothing left to flush at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        rc = 141  # 128 + SIGPIPE
        return rc
    except (NotaGenError, ValueError, OSError) as exc:
        if args.debug:
            raise
        # An OSError no stage anticipated is still one line naming the file.
        line = os_error_line(exc) if isinstance(exc, OSError) else str(exc)
        print(f"notagen-trt {args.command}: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        print(f"notagen-trt {args.command}: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return 143 if terminated else 130
    finally:
        settle_out_dirs(failed=rc != 0)


if __name__ == "__main__":
    sys.exit(command())
