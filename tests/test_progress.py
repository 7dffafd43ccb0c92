"""Progress bars: in place on a terminal, whole lines in a log."""

from __future__ import annotations

import io
import sys

import pytest

from sac.progress import progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_whole_lines_not_redraws(monkeypatch):
    log = io.StringIO()  # not a terminal: stderr redirected to a file
    monkeypatch.setattr(sys, "stderr", log)
    for _ in progress_bar(range(5), desc="sac predict", unit="file", mininterval=0):
        pass
    text = log.getvalue()
    assert "\r" not in text and "\x1b" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert len(lines) >= 2 and lines[-1].startswith("sac predict: 100%") and "5/5" in lines[-1]


@pytest.mark.parametrize("stream", [io.StringIO, Terminal])
def test_a_hidden_bar_writes_nothing(monkeypatch, stream):
    err = stream()
    monkeypatch.setattr(sys, "stderr", err)
    assert list(progress_bar(range(3), shown=False)) == [0, 1, 2]
    assert err.getvalue() == ""


def test_a_transient_bar_is_left_out_of_a_log(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    assert list(progress_bar(range(3), unit="tile", leave=False, mininterval=0)) == [0, 1, 2]
    assert log.getvalue() == ""


def test_a_terminal_gets_the_bar_redrawn_in_place(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    for _ in progress_bar(range(3), desc="train", mininterval=0):
        pass
    assert "\r" in terminal.getvalue()


def test_a_line_the_bar_draws_twice_is_written_once(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    bar = progress_bar(range(2), desc="sac predict", mininterval=0)
    list(bar)
    bar.refresh()  # as a bar's last update and its close draw the same line
    bar.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == len(set(lines))
