"""One vocabulary for the whole command line (issue 17): every option of every sub-command has
help text, shows its default, and options shared by several sub-commands are spelled the same
everywhere (the table in docs/cli.md); old spellings stay accepted, hidden, for one release."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

from calogen.cli import SHARED_OPTIONS, THREADS_DEFAULT, _HelpFormatter, build_parser, main

#: Spellings (lower case, without dashes, '-' and '_') that mean a shared option and must not
#: appear as a visible option under another name.
SYNONYMS: dict[str, str] = {
    **dict.fromkeys(["out", "outdir", "outputdir", "outfile", "outputfile", "dest"], "output"),
    **dict.fromkeys(["noprogress", "progress", "silent", "noprogressbar"], "quiet"),
    **dict.fromkeys(["nthreads", "numthreads", "threadcount", "jobs", "j", "cpus"], "threads"),
    **dict.fromkeys(
        ["number", "numshowers", "nshowers", "showers", "maxshowers", "nevents", "events", "count"],
        "num",
    ),
    **dict.fromkeys(["modeldir", "modelpath", "modelfolder"], "model"),
    **dict.fromkeys(["randomseed", "rngseed"], "seed"),
    **dict.fromkeys(["force", "clobber"], "overwrite"),
    **dict.fromkeys(["chunk", "chunksize", "chunks"], "chunk_size"),
}


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("calogen has no sub-commands")


def _options(sub: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        a for a in sub._actions if not isinstance(a, argparse._HelpAction | argparse._VersionAction)
    ]


def _visible(action: argparse.Action) -> bool:
    return action.help is not argparse.SUPPRESS


def _normalise(option: str) -> str:
    return re.sub(r"[-_]", "", option.lstrip("-").lower())


SUBCOMMANDS = _subcommands()


def test_all_subcommands_present() -> None:
    expected = {"info", "simulate", "generate", "cluster", "merge", "train", "fit-occupancy"}
    expected |= {"distill", "evaluate", "bench", "export"}
    assert expected <= set(SUBCOMMANDS)


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_every_option_has_help(name: str) -> None:
    sub = SUBCOMMANDS[name]
    visible_dests = {a.dest for a in _options(sub) if _visible(a)}
    for action in _options(sub):
        label = f"calogen {name} {'/'.join(action.option_strings) or action.dest}"
        if not _visible(action):  # only hidden old spellings of a shown option may hide
            shared = SHARED_OPTIONS.get(action.dest)
            assert shared is not None and set(action.option_strings) <= set(shared[1]), (
                f"{label}: hidden option that is not an old spelling of a shared option"
            )
            assert action.dest in visible_dests, f"{label}: hidden alias of nothing shown"
            continue
        assert action.help and action.help.strip(), f"{label}: no help text"
        assert action.help.strip() != action.dest, f"{label}: help text only repeats the name"


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_defaults_are_shown(name: str) -> None:
    formatter = _HelpFormatter(prog=f"calogen {name}")
    for action in _options(SUBCOMMANDS[name]):
        if not _visible(action) or not action.option_strings:
            continue
        if action.default is None or isinstance(action.default, bool):
            continue  # required, computed (named in the help) or a flag
        text = formatter._get_help_string(action) or ""
        assert "default" in text.lower(), f"calogen {name} {action.option_strings}: no default"


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_shared_options_spelled_the_same(name: str) -> None:
    for action in _options(SUBCOMMANDS[name]):
        if not action.option_strings:
            continue  # positional: no spelling
        label = f"calogen {name} {'/'.join(action.option_strings)}"
        if action.dest in SHARED_OPTIONS:
            names, old = SHARED_OPTIONS[action.dest]
            allowed = set(names) if _visible(action) else set(old)
            assert set(action.option_strings) == allowed or (
                not _visible(action) and set(action.option_strings) <= allowed
            ), f"{label}: spell it {'/'.join(names)}"
        for option in action.option_strings:
            for dest, (names, old) in SHARED_OPTIONS.items():
                if option in names or option in old:
                    assert action.dest == dest, f"{label}: {option} is reserved for {dest}"
            if _visible(action):
                meaning = SYNONYMS.get(_normalise(option))
                if meaning is not None and meaning != action.dest:
                    spelled = "/".join(SHARED_OPTIONS[meaning][0])
                    raise AssertionError(f"{label}: looks like {spelled}; use that spelling")
        if action.dest == "threads":
            assert action.default == THREADS_DEFAULT, f"{label}: default must be {THREADS_DEFAULT}"


def test_same_option_string_same_meaning_everywhere() -> None:
    """An option string names one destination in every sub-command, and a destination used by
    several sub-commands is spelled the same in all of them."""
    dests: dict[str, set[str]] = {}
    spellings: dict[str, dict[frozenset[str], list[str]]] = {}
    for name, sub in SUBCOMMANDS.items():
        for action in _options(sub):
            if not action.option_strings or not _visible(action):
                continue
            for option in action.option_strings:
                dests.setdefault(option, set()).add(action.dest)
            spelled = frozenset(action.option_strings)
            spellings.setdefault(action.dest, {}).setdefault(spelled, []).append(name)
    assert not {o: d for o, d in dests.items() if len(d) > 1}
    assert not {d: s for d, s in spellings.items() if len(s) > 1}


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["train", "caloclouds", "--data", "d.h5", "--out", "run"], {"output": "run"}),
        (["train", "caloclouds", "--data", "d.h5", "-o", "run", "--no-progress"], {"quiet": True}),
        (["distill", "--teacher", "t", "--data", "d.h5", "--out", "run"], {"output": "run"}),
        (["export", "--format", "onnx", "--out", "m.onnx"], {"output": "m.onnx"}),
        (
            ["evaluate", "--reference", "r.h5", "--candidate", "c.h5", "--out", "rep"],
            {"output": "rep", "num": None},
        ),
        (
            ["evaluate", "--reference", "r", "--candidate", "c", "-o", "rep", "--max-showers", "5"],
            {"num": 5},
        ),
        (["fit-occupancy", "--model", "m", "--data", "d", "--showers", "7"], {"num": 7}),
        (["fit-occupancy", "--model", "m", "--data", "d"], {"num": 1000, "threads": 1}),
        (["bench", "-n", "3"], {"num": 3, "model": "default"}),
        (["generate", "--energy", "50", "-n", "2", "-o", "x.h5"], {"model": "default"}),
    ],
)
def test_old_and_new_spellings(argv: list[str], expected: dict[str, object]) -> None:
    args = build_parser().parse_args(argv)
    for key, value in expected.items():
        assert getattr(args, key) == value, (argv, key)


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "caloclouds", "--data", "d.h5"],
        ["evaluate", "--reference", "r.h5", "--candidate", "c.h5"],
        ["export", "--format", "onnx"],
        ["merge", "a.h5"],
    ],
)
def test_missing_output_is_one_line(argv: list[str]) -> None:
    code, out, err = _run(argv)
    assert code == 2 and not out
    assert err.count("\n") == 1
    assert "the following arguments are required: -o/--output" in err


def test_old_and_new_spelling_together_refused() -> None:
    code, _, err = _run(["train", "caloclouds", "--data", "d", "-o", "a", "--out", "b"])
    assert code == 2 and err.startswith("calogen: error: argument") and err.count("\n") == 1


def test_fit_occupancy_refuses_the_shipped_model(tmp_path: Path) -> None:
    code, _, err = _run(["fit-occupancy", "--model", "default", "--data", str(tmp_path / "x")])
    assert code == 2 and "read-only" in err and err.count("\n") == 1


def test_parser_imports_neither_torch_nor_numpy() -> None:
    """``calogen --version`` and ``--help`` must answer at once (issue 17: < 0.3 s)."""
    code = (
        "import sys; from calogen.cli import build_parser; build_parser().format_help(); "
        "print(sorted(m for m in ('torch', 'numpy', 'h5py', 'scipy') if m in sys.modules))"
    )
    src = str(Path(__file__).resolve().parents[1] / "src")
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin"},
    )
    assert result.stdout.strip() == "[]"
