"""Stand-ins shared by the API and CLI unit tests (no broker)."""

from __future__ import annotations

import sys

import pytest

from sluicegate import cli


class FakeStats:
    """The ``sg.stats`` view the API follows: ``items`` by key."""

    def __init__(self) -> None:
        self.items: dict[str, object] = {}


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``sluicegate ARGV`` in-process: (exit code, stdout, stderr)."""
    try:
        cli.main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    out, err = capsys.readouterr()
    return code, out, err
