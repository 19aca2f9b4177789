"""Progress reporting: plain lines at most every ~10 s of the (injected) clock plus a final line, nothing when
quiet, rich bars only on a terminal, and ``--quiet`` on the command line."""

from __future__ import annotations

import io
import re

import pytest

from lpo_bench import progress


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _reset_progress():
    yield
    progress.configure()


def test_plain_lines_at_most_every_interval_plus_a_final_line():
    clock, out = FakeClock(), io.StringIO()
    progress.configure(stream=out, clock=clock)
    assert progress.current_mode() == "plain"
    with progress.task("train", total=600, unit="update") as bar:
        for i in range(600):
            clock.t += 0.25  # 4 updates per second: 150 s in all
            bar.advance(1, loss=1.0 / (i + 1), rates={"pairs": 8})
    lines = out.getvalue().splitlines()
    assert 14 <= len(lines) <= 16  # one per 10 s of 150 s, plus the final line
    first = lines[0]
    assert first.startswith("[train] update 40/600 (7%) 4 it/s, ETA 2m20s, 32 pairs/s, loss=0.025")
    assert lines[-1].startswith("[train] update 600/600 (100%) in 2m30s, 4 it/s")
    assert "loss=" in lines[-1] and "ETA" not in lines[-1]


def test_plain_lines_of_an_unknown_total_and_a_resumed_count():
    clock, out = FakeClock(), io.StringIO()
    progress.configure(stream=out, clock=clock, interval_s=5)
    with progress.task("x", completed=100, unit="update") as bar:
        for _ in range(3):
            clock.t += 3
            bar.advance(2)
    assert out.getvalue().splitlines() == ["[x] update 104 1.5 s/it", "[x] update 106 in 9s, 1.5 s/it"]


def test_a_bar_left_by_an_exception_says_it_stopped():
    out = io.StringIO()
    progress.configure(stream=out, clock=FakeClock())
    with pytest.raises(KeyError), progress.task("x", total=3) as bar:
        bar.advance(1)
        raise KeyError("boom")
    assert out.getvalue().rstrip().endswith("(stopped)")


def test_quiet_prints_nothing():
    out = io.StringIO()
    progress.configure(quiet=True, stream=out, clock=FakeClock())
    with progress.task("x", total=3) as bar:
        bar.advance(3, loss=0.1)
    progress.configure(stream=out)
    with progress.task("y", total=3, quiet=True) as bar:
        bar.advance(3)
    assert out.getvalue() == ""


def test_rich_bars_only_on_a_terminal(monkeypatch):
    progress.configure(stream=io.StringIO())
    assert progress.current_mode() == "plain"
    tty = FakeTTY()
    progress.configure(stream=tty)
    assert progress.current_mode() == "rich"
    monkeypatch.setenv("RANK", "1")  # a non-main process of a distributed run
    assert progress.current_mode() == "quiet"
    monkeypatch.delenv("RANK")
    with progress.task("outer", total=2, unit="stage") as outer:
        with progress.task("inner", total=4, unit="image") as inner:
            inner.advance(4, loss=0.5)
        outer.advance(2)
    text = tty.getvalue()
    assert "[inner] image 4/4 (100%)" in text and "[outer] stage 2/2 (100%)" in text
    assert progress._live["progress"] is None  # the live display stopped with the last bar


def test_cli_quiet_prints_no_progress(tmp_path, capsys):
    from lpo_bench.cli import main

    assert main(["--quiet", "toy", "make-pairs", "--out", str(tmp_path / "p"), "--n-train", "2", "--n-val", "1",
                 "--n-test", "1"]) == 0
    out = capsys.readouterr().out
    assert "[toy pairs] train: 2 pairs" in out and "pairs:" in out  # the command's own lines
    assert not re.search(r"\[toy pairs\] image \d+", out)  # no progress lines (as in plain mode)
    assert main(["list"]) == 0  # each command line sets the mode again: without --quiet, auto
    assert progress.current_mode() == "plain"
