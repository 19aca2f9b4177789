"""Progress of long work: counts, rate, ETA and a few latest values per bar.

Three modes, chosen once by the caller (the CLI) with :func:`configure`: ``rich`` (live bars from
``rich.progress``, imported only when a bar opens), ``plain`` (line-based, for CI logs and ``| tee``: at most one
line per bar every ``interval_s`` seconds, plus a final line) and ``quiet`` (nothing). The default picks ``rich``
when the stream is a terminal and ``plain`` otherwise. Bars nest: a bar opened inside another shows below it.

    with progress.task("toy pairs", total=n, unit="image") as bar:
        bar.advance(k, loss=0.5, rates={"pairs": 32})  # rates: counts shown as a rate, e.g. "105 pairs/s"

A plain line reads ``[toy pairs] image 120/600 (20%) 3.1 it/s, ETA 2m35s, loss=0.512``. Processes other than
rank 0 of a distributed run (``RANK`` set and not 0) show nothing.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TextIO

MODES = ("rich", "plain", "quiet")


@dataclass
class _Settings:
    mode: str | None = None  # None: rich on a terminal, else plain
    stream: TextIO | None = None  # None: sys.stdout at the time a bar opens
    clock: Callable[[], float] = time.monotonic
    interval_s: float = 10.0


_settings = _Settings()
_live: dict[str, Any] = {"progress": None, "open": 0}  # the shared rich Progress while any rich bar is open


def configure(*, quiet: bool = False, mode: str | None = None, stream: TextIO | None = None,
              clock: Callable[[], float] | None = None, interval_s: float = 10.0) -> None:
    """Set how bars report, replacing every earlier setting. ``quiet`` wins over ``mode``; ``mode`` None picks
    rich on a terminal, plain otherwise; ``stream`` defaults to sys.stdout; ``clock`` (seconds) to
    time.monotonic; ``interval_s``: the least time between two plain lines of a bar."""
    global _settings
    if mode is not None and mode not in MODES:
        raise ValueError(f"progress mode {mode!r} is not one of {', '.join(MODES)}")
    _settings = _Settings(mode="quiet" if quiet else mode, stream=stream, clock=clock or time.monotonic,
                          interval_s=float(interval_s))


def _stream() -> TextIO:
    return _settings.stream if _settings.stream is not None else sys.stdout


def current_mode() -> str:
    """The mode a bar opened now would use."""
    if _settings.mode is not None:
        return _settings.mode
    if os.environ.get("RANK", "0") not in ("", "0"):
        return "quiet"
    isatty = getattr(_stream(), "isatty", None)
    try:
        return "rich" if isatty is not None and isatty() else "plain"
    except ValueError:  # a closed stream
        return "plain"


def format_duration(seconds: float) -> str:
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _rate(r: float) -> str:
    return f"{r:.3g} it/s" if r >= 1 or r == 0 else f"{1 / r:.3g} s/it"


@dataclass
class Bar:
    """One bar: ``completed`` of ``total`` (None: unknown) ``unit``s. Use :func:`task` to open one."""

    label: str
    total: int | None
    unit: str
    completed: int
    mode: str
    start: float
    fields: dict[str, Any] = field(default_factory=dict)
    tallies: dict[str, float] = field(default_factory=dict)
    done_here: int = 0  # advanced since the bar opened (the rate's numerator; ``completed`` may start > 0)
    last_line: float = 0.0
    closed: bool = False
    rich_id: Any = None

    def advance(self, n: int = 1, *, rates: Mapping[str, float] | None = None, **fields: Any) -> None:
        """Count ``n`` more units; ``fields`` replace the shown values (None drops one); ``rates`` add to
        counts shown per second (e.g. {"pairs": 32})."""
        self.completed += int(n)
        self.done_here += int(n)
        for k, v in (rates or {}).items():
            self.tallies[k] = self.tallies.get(k, 0.0) + float(v)
        self.update(**fields)
        if self.mode == "plain" and _settings.clock() - self.last_line >= _settings.interval_s:
            self._line(self.text())

    def update(self, **fields: Any) -> None:
        """Replace shown values without counting (e.g. the name of the current stage)."""
        for k, v in fields.items():
            if v is None:
                self.fields.pop(k, None)
            else:
                self.fields[k] = v
        if self.mode == "rich" and not self.closed:
            _live["progress"].update(self.rich_id, completed=self.completed, info=self.info())

    def elapsed(self) -> float:
        return max(0.0, _settings.clock() - self.start)

    def info(self, final: bool = False) -> str:
        """Rate, ETA (or the time taken, when ``final``), tallies per second and fields."""
        dt = self.elapsed()
        parts = []
        if final:
            parts.append(f"in {format_duration(dt)}")
        if dt > 0 and self.done_here:
            rate = self.done_here / dt
            parts.append(_rate(rate))
            if not final and self.total is not None and self.total > self.completed:
                parts.append(f"ETA {format_duration((self.total - self.completed) / rate)}")
            parts += [f"{v / dt:.3g} {k}/s" for k, v in self.tallies.items()]
        parts += [f"{k}={_value(v)}" for k, v in self.fields.items()]
        return ", ".join(parts)

    def text(self, final: bool = False) -> str:
        count = f"{self.completed}/{self.total}" if self.total is not None else f"{self.completed}"
        pct = f" ({100 * self.completed / self.total:.0f}%)" if self.total else ""
        info = self.info(final)
        return f"[{self.label}] {self.unit} {count}{pct}" + (f" {info}" if info else "")

    def _line(self, text: str) -> None:
        stream = _stream()
        stream.write(text + "\n")
        stream.flush()
        self.last_line = _settings.clock()

    def close(self, stopped: bool = False) -> None:
        """The final line (plain), or remove the bar and print that line above the others (rich)."""
        if self.closed:
            return
        self.closed = True
        text = self.text(final=True) + (" (stopped)" if stopped else "")
        if self.mode == "plain":
            self._line(text)
        elif self.mode == "rich":
            prog = _live["progress"]
            prog.remove_task(self.rich_id)
            prog.console.print(text, markup=False, highlight=False, soft_wrap=True)
            _live["open"] -= 1
            if _live["open"] == 0:
                prog.stop()
                _live["progress"] = None


def _rich_progress() -> Any:
    import rich.progress as rp
    from rich.console import Console
    from rich.table import Column

    console = Console(file=_settings.stream) if _settings.stream is not None else Console()
    # on a narrow terminal the values column is cut short, never the label
    prog = rp.Progress(rp.TextColumn("{task.description}", markup=False, table_column=Column(no_wrap=True)),
                       rp.BarColumn(bar_width=20), rp.MofNCompleteColumn(), rp.TaskProgressColumn(),
                       rp.TimeElapsedColumn(), rp.TextColumn("{task.fields[info]}", markup=False, table_column=Column(
                           ratio=1, no_wrap=True, overflow="ellipsis")),
                       console=console, transient=True, refresh_per_second=4, get_time=_settings.clock, expand=True)
    prog.start()
    return prog


@contextmanager
def task(label: str, total: int | None = None, *, unit: str = "it", completed: int = 0,
         quiet: bool = False) -> Iterator[Bar]:
    """A bar for the duration of the block (see the module docstring); ``quiet`` silences this bar only
    (e.g. on processes other than the main one)."""
    mode = "quiet" if quiet else current_mode()
    now = _settings.clock()
    bar = Bar(label, None if total is None else int(total), unit, int(completed), mode, now, last_line=now)
    if mode == "rich":
        try:
            if _live["progress"] is None:
                _live["progress"] = _rich_progress()
        except ImportError:  # rich is a dependency, but a bar never breaks a run
            bar.mode = "plain"
        else:
            _live["open"] += 1
            bar.rich_id = _live["progress"].add_task(f"[{label}] {unit}", total=bar.total, completed=bar.completed,
                                                     info="")
    stopped = False
    try:
        yield bar
    except BaseException:
        stopped = True
        raise
    finally:
        bar.close(stopped)
