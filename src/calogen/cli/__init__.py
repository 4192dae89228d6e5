"""The ``calogen`` command.

Each group of sub-commands lives in its own module (``cli/data.py``, ``cli/models.py``,
``cli/evaluate.py``, ...) that defines ``register(subparsers)``; every sub-command parser
gets ``func=`` set to a function ``(args) -> int``. Errors the user can act on are
:class:`calogen.errors.CalogenError` and are printed as one line (no traceback unless
``--debug``); usage errors exit with 2, runtime failures with 1.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from calogen import __version__
from calogen.errors import CalogenError, UsageError

#: Modules that register sub-commands, in the order they appear in ``--help``.
COMMAND_MODULES = (
    "calogen.cli.data",
    "calogen.cli.models",
    "calogen.cli.evaluate",
    "calogen.cli.bench",
    "calogen.cli.export",
)


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"calogen: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="calogen",
        description=(
            "Fast simulation of particle showers in highly granular calorimeters with "
            "generative models. Units: positions in mm, incident energies in GeV, cell "
            "energies and thresholds in MeV."
        ),
    )
    parser.add_argument("--version", action="version", version=f"calogen {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # command group not built yet
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``calogen`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CalogenError as exc:
        if args.debug:
            raise
        print(f"calogen: error: {_one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("calogen: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`, which closed early
        sys.stderr.close()
        return 0
    except Exception as exc:  # unexpected: still one line unless --debug
        if args.debug:
            raise
        print(
            f"calogen: internal error: {type(exc).__name__}: {_one_line(exc)} "
            "(run with --debug for details)",
            file=sys.stderr,
        )
        return 1


def _one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (messages quoting a parser or library error may
    span several; batch logs and scripts expect one line per error)."""
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def positive_int(text: str) -> int:
    """argparse type: an integer > 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def finite_float(text: str) -> float:
    """argparse type: a finite float."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be finite, got {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite float > 0 (energies in GeV)."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


__all__ = ["UsageError", "build_parser", "finite_float", "main", "positive_float", "positive_int"]

if __name__ == "__main__":
    sys.exit(main())
