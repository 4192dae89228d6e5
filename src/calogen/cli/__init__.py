"""The ``calogen`` command.

Each group of sub-commands lives in its own module (``cli/data.py``, ``cli/models.py``,
``cli/evaluate.py``, ...) that defines ``register(subparsers)``; every sub-command parser
gets ``func=`` set to a function ``(args) -> int``. Errors the user can act on are
:class:`calogen.errors.CalogenError` and are printed as one line (no traceback unless
``--debug``); usage errors exit with 2, runtime failures with 1.

Options that several sub-commands share are added with the helpers below (:func:`add_output`,
:func:`add_quiet`, :func:`add_threads`, :func:`add_num`, :func:`add_model`) so that they are
spelled the same everywhere (:data:`SHARED_OPTIONS`, docs/cli.md); old spellings stay accepted
as hidden aliases for one release. Importing this package and building the parser imports
neither torch nor numpy: ``calogen --version`` and ``--help`` answer at once.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


#: Default of ``--threads`` in every sub-command: one torch thread (batch farms run one
#: process per core; pass more for interactive use).
THREADS_DEFAULT = 1

#: Options shared by several sub-commands: destination -> (option strings, hidden old
#: spellings still accepted for one release). tests/test_cli_options.py holds every
#: sub-command to these spellings.
SHARED_OPTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "output": (("-o", "--output"), ("--out",)),
    "quiet": (("--quiet",), ("--no-progress",)),
    "threads": (("--threads",), ()),
    "num": (("-n", "--num"), ("--showers", "--max-showers")),
    "model": (("--model",), ()),
    "seed": (("--seed",), ()),
    "overwrite": (("--overwrite",), ()),
    "chunk_size": (("--chunk-size",), ()),
    "json": (("--json",), ()),
    "data": (("--data",), ()),
    "geometry": (("--geometry",), ()),
    "energy": (("--energy",), ()),
    "config": (("--config",), ()),
    "resume": (("--resume",), ()),
    "iterations": (("--iterations",), ()),
}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to an option's help unless the help already names its default,
    the default is None (required or computed) or the option is a flag."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            default is None
            or default is argparse.SUPPRESS
            or isinstance(default, bool)
            or not action.option_strings
            or "default" in text.lower()
        ):
            return action.help
        if isinstance(default, list | tuple):
            default = " ".join(str(v) for v in default)
        return f"{text} (default: {str(default).replace('%', '%%')})"


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line and exit code 2, and whose help shows the
    defaults of all options."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        # a required option with a hidden old spelling is a required one-member group
        match = re.fullmatch(r"one of the arguments (\S+) is required", message)
        if match:
            message = f"the following arguments are required: {match.group(1)}"
        self.exit(2, f"calogen: error: {message} (see '{self.prog} --help')\n")


def _with_aliases(
    parser: argparse.ArgumentParser,
    dest: str,
    required: bool,
    old: Sequence[str] | None = None,
    **kwargs: Any,
) -> argparse.Action:
    """Add the shared option ``dest`` with its canonical spelling and hidden aliases (``old``,
    a subset of its old spellings; default all of them)."""
    names, aliases = SHARED_OPTIONS[dest]
    if old is not None:
        assert set(old) <= set(aliases), f"{old}: not old spellings of --{dest}"
        aliases = tuple(old)
    holder: Any = parser.add_mutually_exclusive_group(required=True) if required else parser
    action = holder.add_argument(*names, dest=dest, **kwargs)
    hidden = {k: v for k, v in kwargs.items() if k in ("action", "type", "nargs", "metavar")}
    for alias in aliases:
        if alias in parser._option_string_actions:
            continue
        holder.add_argument(
            alias, dest=dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **hidden
        )
    return action


def add_output(
    parser: argparse.ArgumentParser,
    *,
    metavar: str = "OUT.h5",
    help: str = "output file (written under a temporary name, renamed when complete)",
    required: bool = True,
) -> argparse.Action:
    """``-o/--output`` (old spelling ``--out`` hidden)."""
    return _with_aliases(parser, "output", required, metavar=metavar, help=help)


def add_quiet(parser: argparse.ArgumentParser, *, help: str = "no progress bar") -> argparse.Action:
    """``--quiet`` (old spelling ``--no-progress`` hidden)."""
    return _with_aliases(parser, "quiet", False, action="store_true", help=help)


def add_threads(
    parser: argparse.ArgumentParser,
    *,
    help: str = "CPU threads for torch (default: {default}; batch farms run one process per core)",
) -> argparse.Action:
    """``--threads`` with the same default in every sub-command."""
    return _with_aliases(
        parser,
        "threads",
        False,
        type=positive_int,
        default=THREADS_DEFAULT,
        metavar="T",
        help=help.format(default=THREADS_DEFAULT),
    )


def add_num(
    parser: argparse.ArgumentParser,
    *,
    help: str,
    default: int | None = None,
    required: bool = False,
    old: Sequence[str] = (),
) -> argparse.Action:
    """``-n/--num``: a number of showers (``old``: the sub-command's former spelling, kept
    hidden)."""
    return _with_aliases(
        parser, "num", required, old, type=positive_int, default=default, metavar="N", help=help
    )


#: models shipped inside the package besides the default, selected by name with ``--model``
#: (folders under ``calogen/pretrained``; docs/bibae_l2lflows.md says how they were made)
SHIPPED_MODELS = ("l2lflows",)


def add_model(
    parser: argparse.ArgumentParser,
    *,
    help: str = (
        "trained model folder, 'default' for the model shipped with calogen, or the name of "
        "another shipped model: " + ", ".join(SHIPPED_MODELS) + " (a folder of that name in "
        "the working directory: ./NAME)"
    ),
    metavar: str = "DIR|default|NAME",
    default: str | None = "default",
    required: bool = False,
) -> argparse.Action:
    """``--model DIR|default``; :func:`model_dir` turns ``default`` into ``None``."""
    if default is not None:
        help = f"{help} (default: {default})"
    return parser.add_argument(
        "--model", default=default, required=required, metavar=metavar, help=help
    )


def model_dir(value: str | None) -> str | None:
    """The folder named by ``--model``: ``None`` (the shipped model) for ``default``, the
    package's folder for the name of another shipped model (:data:`SHIPPED_MODELS`)."""
    if value in (None, "default"):
        return None
    if value in SHIPPED_MODELS:
        return str(Path(__file__).resolve().parents[1] / "pretrained" / value)
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``calogen`` parser with every sub-command (imports no torch or numpy)."""
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


__all__ = [
    "SHARED_OPTIONS",
    "THREADS_DEFAULT",
    "UsageError",
    "add_model",
    "add_num",
    "add_output",
    "add_quiet",
    "add_threads",
    "build_parser",
    "finite_float",
    "main",
    "model_dir",
    "positive_float",
    "positive_int",
]

if __name__ == "__main__":
    sys.exit(main())
