"""Every command the docs give parses (its options exist, its required arguments are there), every file they link
or name exists.

The commands are read from the repository's Markdown (fenced shell blocks and inline code): ``mg3 ...``,
``python -m MODULE ...`` and ``python bench/SCRIPT.py ...`` (or ``examples/``). Each is run up to its ``parse_args`` and stopped
there, so nothing is loaded or computed. A placeholder in capitals (``--frames N``, ``--split S``) may fail its
option's type; ``[--flag value]`` is checked with and without what the brackets hold. Inline code without an
option (``mg3 data summary``, ``python -m world_model.train.export int8``) names a command in prose and is left out.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import runpy
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*$")
_ENV_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")


class _Parsed(Exception):
    """Raised by the patched ``parse_args`` once a command's arguments parsed."""


def _markdown_files() -> list[Path]:
    files = subprocess.run(["git", "ls-files", "*.md"], cwd=ROOT, capture_output=True, text=True, check=True)
    return [ROOT / f for f in files.stdout.split()]


def _variants(segment: str) -> list[str]:
    """A segment with its ``[optional]`` groups left out and kept."""
    if "[" not in segment:
        return [segment]
    return [re.sub(r"\s*\[[^\]]*\]", "", segment), re.sub(r"\[([^\]]*)\]", r"\1", segment)]


def _commands(text: str) -> list[tuple[list[str], bool]]:
    """(argv, from a fenced block) of every runnable command in a Markdown text."""
    found = []
    for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", text, re.S):
        found += [(line.split("  #")[0], True) for line in block.splitlines()]
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    found += [(span, False) for span in re.findall(r"`([^`\n]+)`", prose)]
    out = []
    for line, fenced in found:
        for segment in re.split(r"\s*(?:&&|;|\|\|?)\s*", line.strip()):
            if "..." in segment or "…" in segment:  # an elided command
                continue
            for variant in _variants(segment):
                try:
                    words = shlex.split(variant)
                except ValueError:
                    continue
                while words and _ENV_ASSIGNMENT.match(words[0]):
                    words = words[1:]
                if _runnable(words) and (fenced or any(w.startswith("--") for w in words)):
                    out.append((words, fenced))
    return out


def _runnable(words: list[str]) -> bool:
    if not words:
        return False
    if words[0] == "mg3":
        return len(words) > 1
    if words[0] not in ("python", "python3") or len(words) < 2:
        return False
    if words[1] == "-m":
        return len(words) > 2 and words[2] != "pytest"
    return words[1].startswith(("bench/", "examples/")) and words[1].endswith(".py")


def _parse_only(words: list[str]) -> str | None:
    """Run ``words`` up to its parse; None where it parsed, else the parser's complaint."""
    if words[0] == "mg3":
        target, argv, as_module = "mg3_env.cli", words[1:], True
    elif words[1] == "-m":
        target, argv, as_module = words[2], words[3:], True
    else:
        target, argv, as_module = str(ROOT / words[1]), words[2:], False
    parse_args = argparse.ArgumentParser.parse_args

    def stop_after_parsing(self, args=None, namespace=None):
        raise _Parsed(parse_args(self, args, namespace))

    err = io.StringIO()
    saved_argv, saved_path = sys.argv, list(sys.path)
    try:
        argparse.ArgumentParser.parse_args = stop_after_parsing
        sys.argv = [target, *argv]
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # runpy: the module was imported before
            if as_module:
                runpy.run_module(target, run_name="__main__")
            else:
                sys.path.insert(0, str(Path(target).parent))  # as `python bench/x.py` sets it
                runpy.run_path(target, run_name="__main__")
    except _Parsed:
        return None
    except SystemExit as e:
        if e.code == 0:  # --help
            return None
        complaint = (err.getvalue().strip().splitlines() or [f"exit {e.code}"])[-1]
        refused = re.search(r"argument [^:]+: [^']*'([^']*)'", complaint)  # the value its option refused
        if refused and _PLACEHOLDER.match(refused.group(1)):
            return None  # a placeholder (N, DIR, SPEC) that its option's type refuses
        return complaint
    finally:
        argparse.ArgumentParser.parse_args = parse_args
        sys.argv, sys.path[:] = saved_argv, saved_path
    return "ran without parsing arguments"


def test_every_command_in_the_docs_parses():
    checked, failed = set(), []
    for md in _markdown_files():
        for words, _ in _commands(md.read_text()):
            if tuple(words) in checked:
                continue
            checked.add(tuple(words))
            if (complaint := _parse_only(words)) is not None:
                failed.append(f"{md.relative_to(ROOT)}: {shlex.join(words)}\n    {complaint}")
    assert len(checked) > 50, f"only {len(checked)} commands found in the docs: the extraction broke"
    assert not failed, "commands in the docs that do not parse:\n" + "\n".join(failed)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("mg3 eval --parts control", [["mg3", "eval", "--parts", "control"]]),
        ("mg3 data summary", []),  # prose: no option
        ("MG3_X=1 python -m mg3_eval.idm_build --out F", [["python", "-m", "mg3_eval.idm_build", "--out", "F"]]),
        ("pip install -e . && mg3 demo --out d", [["mg3", "demo", "--out", "d"]]),
        ("mg3 data validate DIR [--no-decode]", [["mg3", "data", "validate", "DIR", "--no-decode"]]),
        ("mg3 x --a 1 [--b 2]", [["mg3", "x", "--a", "1"], ["mg3", "x", "--a", "1", "--b", "2"]]),
        ("python -m pytest -x -q", []),
        ("bash bench/gpu/session.sh 16 --seed 12 ...", []),
    ],
)  # fmt: skip
def test_commands_are_read_from_prose(line, expected):
    assert [words for words, _ in _commands(f"`{line}`")] == expected


def test_a_wrong_option_is_reported():
    assert "unrecognized arguments: --no-such-flag" in _parse_only(["mg3", "eval", "--no-such-flag"])
    assert "invalid int value: 'two'" in _parse_only(["mg3", "eval", "--episodes", "two"])
    assert _parse_only(["mg3", "eval", "--episodes", "N"]) is None  # a placeholder
    assert _parse_only(["python", "bench/embedded_speed.py", "--chunks", "6"]) is None


_TOP_FOLDERS = ("agents/", "bench/", "docs/", "examples/", "mg3_env/", "mg3_eval/", "tests/", "world_model/")
_FILE = re.compile(r"\.(py|json|png|md|sh|tar|txt|safetensors|mp4)$")


def test_every_file_the_docs_link_or_name_exists():
    """Markdown links resolve from their file; a repository path in inline code (`bench/results/x.json`) exists,
    placeholders (`docs/embedded/metrics_*_cpu.json`, `runs/NAME/...`) aside."""
    missing = []
    for md in _markdown_files():
        text = md.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if not re.match(r"^[a-z]+:|#", target) and not (md.parent / target.split("#")[0]).exists():
                missing.append(f"{md.relative_to(ROOT)}: link {target}")
        for path in re.findall(r"`([^`\s]+)`", text):
            placeholder = re.search(r"[A-Z]{2,}|[*{<]", path)
            if path.startswith(_TOP_FOLDERS) and _FILE.search(path) and not placeholder and not (ROOT / path).exists():
                missing.append(f"{md.relative_to(ROOT)}: {path}")
    assert not missing, "files the docs name that are not there:\n" + "\n".join(missing)
