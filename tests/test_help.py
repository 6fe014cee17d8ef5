"""Every help text of the command line, held to a stored copy.

The copy (``fixtures/help.txt``) was written from the single-file ``gwi/cli.py`` before it became the
``gwi/cli/`` package (issue 28): moving parsers between modules must not change a byte a user reads.
A deliberate change to the CLI rewrites the copy with ``GWI_WRITE_HELP=1 pytest tests/test_help.py``
and the diff shows in review."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from gwi.cli import build_parser

COPY = Path(__file__).parent / "fixtures" / "help.txt"
RULE = "=" * 100


def _walk(p: argparse.ArgumentParser, path: str):
    """(command path, help text) for ``p`` and every parser below it, in the order they were added."""
    yield path, p.format_help()
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, q in action.choices.items():
                yield from _walk(q, f"{path} {name}")


def _all_help() -> str:
    return "".join(f"{RULE}\n$ {path} --help\n{text}" for path, text in _walk(build_parser(), "gwi"))


@pytest.fixture
def fixed_width(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")  # argparse wraps to the terminal's width


def test_help_texts_match_the_stored_copy(fixed_width):
    now = _all_help()
    if os.environ.get("GWI_WRITE_HELP"):
        COPY.write_text(now)
    assert COPY.exists(), f"{COPY} is missing: write it with GWI_WRITE_HELP=1"
    want = COPY.read_text()
    if now != want:  # name the first command whose help differs, not a 60 kB diff
        old = dict(_split(want))
        for path, text in _split(now):
            assert old.pop(path, None) == text, f"`{path} --help` changed:\n{text}"
        assert not old, f"commands gone: {sorted(old)}"
    assert now == want


def _split(text: str):
    for block in text.split(RULE + "\n")[1:]:
        head, _, body = block.partition("\n")
        yield head.removeprefix("$ ").removesuffix(" --help"), body


def test_the_copy_covers_every_command(fixed_width):
    paths = [p for p, _ in _split(COPY.read_text())]
    assert paths[0] == "gwi" and len(paths) == len(set(paths))
    for group in ("data", "kaggle", "runs", "sweep", "ensemble", "submission"):
        assert f"gwi {group}" in paths, group
    assert sum(p.count(" ") == 2 for p in paths) >= 18, "sub-sub-commands missing"
