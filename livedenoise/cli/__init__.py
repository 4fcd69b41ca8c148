"""The ``livedenoise`` command: parses, sets up logging, calls the library.

Each sub-command is a module in this package with ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Command modules import only the
standard library at module level; heavy imports happen inside ``run``.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from importlib import import_module
from types import ModuleType

__all__ = ["COMMANDS", "main"]

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
    "evaluate": "evaluate",
    "models": "models",
    "export": "export",
    "bench": "bench",
}

EPILOG = """\
Start with `livedenoise demo`: a simulated sCMOS camera streams through the whole
pipeline and the restored frames are published on tcp://127.0.0.1:5555; watch them
from another terminal with `livedenoise subscribe`. Every command has --help.
"""


class CLIError(Exception):
    """An error the user can act on; printed without a traceback, exit status 2."""


def _load(name: str) -> ModuleType:
    return import_module(f"livedenoise.cli.{COMMANDS[name]}")


def build_parser() -> argparse.ArgumentParser:
    from livedenoise import __version__

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
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    _setup_logging(args.verbose, args.quiet)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.traceback or not _is_user_error(exc):
            raise
        print(f"livedenoise {args.command}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        # A Micro-Manager core that ran a sequence can abort the interpreter at exit
        # ("FATAL: exception not rethrown") unless it is collected before shutdown.
        gc.collect()


def _is_user_error(exc: BaseException) -> bool:
    """Errors whose message is the whole story (bad input, missing file, busy port...)."""
    from livedenoise.calibration.maps import CalibrationError
    from livedenoise.inference.engines import EngineUnavailable

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
