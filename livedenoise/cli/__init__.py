"""The ``livedenoise`` command: parses, sets up logging, calls the library.

Each sub-command is a module in this package with ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Command modules import livedenoise's own
modules at the top (they are light: none imports torch or pyzmq at module level); heavy
third-party packages load inside ``run``. Only this package uses argparse: it turns the
options into plain arguments of the library's functions.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
import threading
from importlib import import_module
from types import ModuleType

from livedenoise import __version__
from livedenoise.calibration.maps import CalibrationError
from livedenoise.cli._args import CLIError
from livedenoise.inference.engines import EngineUnavailable

__all__ = ["COMMANDS", "CLIError", "main"]

# command name -> module in livedenoise.cli (order = order in --help)
COMMANDS: dict[str, str] = {
    "demo": "demo",
    "serve": "serve",
    "subscribe": "subscribe",
    "view": "view",
    "denoise": "denoise",
    "calibrate": "calibrate",
    "collect-pairs": "collect_pairs",
    "train": "train",
    "adapt": "adapt",
    "evaluate": "evaluate",
    "models": "models",
    "export": "export",
    "bench": "bench",
    "ctl": "ctl",
}

EPILOG = """\
Start with `livedenoise demo`: a simulated sCMOS camera streams through the whole
pipeline and the restored frames are published on tcp://127.0.0.1:5555; watch them
from another terminal with `livedenoise subscribe`. Every command has --help.
"""


def _load(name: str) -> ModuleType:
    return import_module(f"livedenoise.cli.{COMMANDS[name]}")


def _command_in(argv: list[str]) -> str | None:
    """The command named in ``argv`` (the first word that is not a top-level option), if known."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser; with ``only``, just that command's module is imported (a fast start).

    The other commands are then registered by name only (enough to parse ``only``'s options).
    """

    parser = argparse.ArgumentParser(
        prog="livedenoise",
        description="Restore every camera frame as it arrives (photoelectrons in, photoelectrons out).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"livedenoise {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    parser.add_argument("--traceback", action="store_true", help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        if only is not None and name != only:
            sub.add_parser(name)
            continue
        try:
            mod = _load(name)
        except ModuleNotFoundError as exc:
            if exc.name == f"livedenoise.cli.{COMMANDS[name]}":
                continue  # command not built in this installation
            raise
        p = sub.add_parser(
            name,
            help=mod.HELP,
            description=getattr(mod, "DESCRIPTION", mod.HELP),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.INFO if verbose < 2 else logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    log = logging.getLogger("livedenoise")
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(only=_command_in(argv))
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    _setup_logging(args.verbose, args.quiet)
    code = 1
    try:
        code = int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    except Exception as exc:
        if args.traceback or not _is_user_error(exc):
            raise
        print(f"livedenoise {args.command}: error: {exc}", file=sys.stderr)
        code = 2
    finally:
        # A Micro-Manager core that ran a sequence can abort the interpreter at exit
        # ("FATAL: exception not rethrown") unless it is collected before shutdown.
        gc.collect()
        if argv is None:  # the program itself (not a test calling main): a bounded exit
            _exit_if_threads_left(code)
    return code


def _exit_if_threads_left(code: int) -> None:
    """Exit at once if a stop left a livedenoise thread behind (an engine call that never returned).

    Interpreter shutdown would otherwise wait for it or abort inside the engine's native code
    ("terminate called without an active exception"); everything was reported and flushed.
    """
    left = [t.name for t in threading.enumerate() if t.name.startswith("livedenoise-") and t.is_alive()]
    if not left:
        return
    logging.getLogger("livedenoise").error("exiting with %s still busy", ", ".join(left))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _is_user_error(exc: BaseException) -> bool:
    """Errors whose message is the whole story (bad input, missing file, busy port...)."""

    # ImportError: an optional extra is missing; the message names the pip command
    user = (
        CLIError,
        CalibrationError,
        EngineUnavailable,
        FileNotFoundError,
        PermissionError,
        IsADirectoryError,
        NotADirectoryError,
        ValueError,
        OSError,
        ImportError,
    )
    return isinstance(exc, user)
