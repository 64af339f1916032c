"""``Settings.replay_window_share``: the share of an app's dispatch window a replay may hold."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sluicegate.settings import Settings


@pytest.mark.parametrize("value,ok", [(0.8, True), (1.0, True), (0.01, True), (0, False), (-0.5, False),
                                      (1.01, False)])
def test_bounds(value: float, ok: bool) -> None:
    if ok:
        assert Settings(replay_window_share=value).replay_window_share == value
    else:
        with pytest.raises(ValidationError, match="replay_window_share"):
            Settings(replay_window_share=value)


def test_default_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().replay_window_share == 0.8
    monkeypatch.setenv("SLUICEGATE_REPLAY_WINDOW_SHARE", "0.5")
    assert Settings().replay_window_share == 0.5
