"""Presentation of the comparison report: the report model (sections of tables, figures and text), number
formatting, matplotlib figures (Agg) and the Markdown / self-contained HTML renderers.

Nothing here computes a headline number; it only draws and prints what the analysis modules computed.
"""

from __future__ import annotations

import base64
import html
import math
import numbers
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lpo_bench import records

MIXED = "MIXED HARDWARE"
PHASE_COLORS = {"PREP": "#8c564b", "SAMPLE": "#1f77b4", "SCORE": "#ff7f0e", "UPDATE": "#2ca02c", "RM_TRAIN": "#bbbbbb"}
INPUT_MODE_STYLES = {"noisy_latent": "-", "x0_pred_decoded": "--", "noisy_decoded": ":"}


# ---------------------------------------------------------------------------- report model
@dataclass
class Table:
    name: str  # CSV file stem
    title: str
    df: Any  # raw values (written to the CSV)
    show: Any = None  # strings for md/html; None: df formatted by fmt
    note: str = ""

    def display(self) -> Any:
        return self.show if self.show is not None else self.df.map(fmt)


@dataclass
class Figure:
    file: str  # PNG name inside the report folder
    caption: str


@dataclass
class Answer:
    question: str
    text: str  # generated from the numbers, with its uncertainty


@dataclass
class Section:
    title: str
    blocks: list[Any] = field(default_factory=list)  # str paragraphs, Table, Figure, Answer


# ---------------------------------------------------------------------------- formatting
def fmt(v: Any) -> str:
    """A number for people: 4 significant digits (1 decimal from 100 up), n/a for missing, ∞."""
    if isinstance(v, (str, bool)):
        return str(v)
    if isinstance(v, numbers.Integral):
        return str(int(v))
    try:
        f = float(v)
    except (TypeError, ValueError):  # None, pandas.NA
        return "n/a"
    if math.isnan(f):
        return "n/a"
    if math.isinf(f):
        return "∞" if f > 0 else "-∞"
    return f"{f:.1f}" if abs(f) >= 100 else f"{f:.4g}"


def fmt_ci(v: float, lo: float, hi: float) -> str:
    return f"{fmt(v)} [{fmt(lo)}, {fmt(hi)}]"


def fmt_signed_ci(v: float, lo: float, hi: float) -> str:
    """A change with its CI: "+0.044 [0.028, 0.062]"."""
    return ("+" if v > 0 else "") + fmt_ci(v, lo, hi)


def fmt_range(med: float, lo: float, hi: float) -> str:
    """Median with (min–max) when the seeds differ."""
    return fmt(med) if lo == hi or math.isnan(lo) else f"{fmt(med)} ({fmt(lo)}–{fmt(hi)})"


def fmt_speedup(s: float, reference: str) -> str:
    """A speed-up from stats.speedup(other, reference): ∞ when only the reference reached, 0 when only the
    other did."""
    if math.isnan(s):
        return "n/a"
    if s == 0:
        return f"0 ({reference} missed)"
    return f"∞ (only {reference} reached)" if math.isinf(s) else f"{s:.3g}×"


def fmt_ttt(t: float) -> str:
    return "not reached" if math.isinf(t) else fmt(t)


def slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", s).strip("-")[:80] or "x"


def titled(text: str, mixed: bool) -> str:
    return f"[{MIXED}] {text}" if mixed else text


def jsonable(x: Any) -> Any:
    """JSON-safe copy: nan -> null, ±inf -> "inf"/"-inf", numpy scalars -> Python."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return x
    if isinstance(x, numbers.Integral):
        return int(x)
    if isinstance(x, numbers.Real):
        v = float(x)
        return None if math.isnan(v) else ("inf" if v == math.inf else "-inf" if v == -math.inf else v)
    return None if str(x) in ("<NA>", "nan", "NaT") else str(x)


# ---------------------------------------------------------------------------- published numbers
def published_table(pt: Any, published: Any, measured: set[tuple[str, str]] | None) -> Table:
    """A published table as its own, clearly labelled table (never merged with measured rows); with
    ``measured``, columns without a measured (metric, category) beside them are marked †."""
    import pandas as pd

    labels = []
    for c in pt.columns:
        mark = "" if measured is None or (c.metric, c.category) in measured else " †"
        labels.append(c.label + mark)
    notes = {"note": [r.note for r in pt.rows]} if any(r.note for r in pt.rows) else {}
    keys = [c.key for c in pt.columns]
    df = pd.DataFrame([{"published row": r.label, "backbone": r.backbone, **dict(zip(keys, r.values, strict=True))}
                       for r in pt.rows]).assign(**notes)
    show = pd.DataFrame([{"published row": r.label, "backbone": r.backbone,
                          **{lab: fmt(v) for lab, v in zip(labels, r.values, strict=True)}}
                         for r in pt.rows]).assign(**notes)
    note = f"{published.citation}. Units: {pt.units}. Protocol: {pt.protocol}. {pt.note}"
    if measured is not None and any(lab.endswith("†") for lab in labels):
        note += " †: no measured number with this metric and category here (a different metric id or not run)."
    return Table(f"published_{pt.id}_{slug(pt.rows[0].backbone)}", f"published (paper), not measured here: {pt.title}",
                 df, show, note=note)


# ---------------------------------------------------------------------------- figures
def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _finish(fig: Any, path: Path, title: str, mixed: bool) -> None:
    import io

    fig.suptitle(f"{MIXED}: {title}" if mixed else title, color="crimson" if mixed else "black")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    records.atomic_write_bytes(path, buf.getvalue())


def plot_cost(path: Path, labels: list[str], stacks: dict[str, list[float]], mixed: bool) -> None:
    """Stacked bars: one per label, one segment per phase (RM_TRAIN hatched, at the bottom)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(labels) + 2), 4.2))
    bottom = [0.0] * len(labels)
    for phase, heights in stacks.items():
        h = [0.0 if math.isnan(v) else v for v in heights]
        rm = phase == "RM_TRAIN"
        ax.bar(range(len(labels)), h, bottom=bottom, color=PHASE_COLORS.get(phase, "#999999"),
               label=phase + (" (amortised)" if rm else ""), hatch="//" if rm else None, edgecolor="white")
        bottom = [b + v for b, v in zip(bottom, h, strict=True)]
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("GPU-hours (median over seeds per phase)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _finish(fig, path, "Training cost by ledger phase", mixed)


def plot_curves(path: Path, curves: list[dict[str, Any]], target: float, target_label: str, ylabel: str, title: str,
                mixed: bool, xlabel: str = "counted GPU-hours (excl. reward-model training)") -> None:
    """Metric against cost: ``curves`` = [{method, x, y, reached: (x, y) | None}], one per seed. Each seed is a thin
    line; with several seeds a method also gets its seed band (min-max over seeds at each evaluation index, at the
    seeds' mean cost) and the mean line."""
    import numpy as np

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    cmap = plt.get_cmap("tab10")
    colors = {m: cmap(i % 10) for i, m in enumerate(sorted({c["method"] for c in curves}))}
    for method, col in colors.items():
        mine = [c for c in curves if c["method"] == method]
        for c in mine:
            ax.plot(c["x"], c["y"], marker="o", ms=2, lw=0.8, color=col, alpha=0.5)
            if c["reached"] is not None:
                ax.plot(*[[v] for v in c["reached"]], marker="*", ms=11, color=col)
        n = min(len(c["x"]) for c in mine)
        xs, ys = np.array([c["x"][:n] for c in mine], float), np.array([c["y"][:n] for c in mine], float)
        ax.plot(xs.mean(0), ys.mean(0), lw=2, color=col, label=f"{method} ({len(mine)} seed{'s' * (len(mine) > 1)})")
        if len(mine) > 1:
            ax.fill_between(xs.mean(0), ys.min(0), ys.max(0), color=col, alpha=0.15)
    ax.axhline(target, ls="--", color="black", lw=1, label=target_label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    _finish(fig, path, title, mixed)


def plot_step_accuracy(path: Path, df: Any, mixed: bool) -> None:
    """Accuracy against t per ``curve`` column of ``df`` (timestep, value, ci_low, ci_high, input_mode)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for curve, g in df.groupby("curve", sort=True):
        g = g.sort_values("timestep")
        (line,) = ax.plot(g["timestep"], g["value"], marker="o", ms=3,
                          ls=INPUT_MODE_STYLES.get(g["input_mode"].iloc[0], "-."), label=curve)
        ax.fill_between(g["timestep"], g["ci_low"], g["ci_high"], color=line.get_color(), alpha=0.15)
    ax.axhline(0.5, ls=":", color="gray", lw=1)
    ax.set_xlabel("timestep t (noisier →)")
    ax.set_ylabel("pairwise accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _finish(fig, path, "Step-level reward accuracy", mixed)


def plot_grid(path: Path, cells: list[list[Path | None]], row_labels: list[str], col_labels: list[str], title: str,
              mixed: bool) -> None:
    """An image grid: rows = prompts, columns = models; a missing image is marked."""
    from PIL import Image

    plt = _plt()
    nr, nc = len(row_labels), len(col_labels)
    fig, axes = plt.subplots(nr, nc, figsize=(1.7 * nc + 2.0, 1.7 * nr + 0.7), squeeze=False)
    fig.subplots_adjust(wspace=0.05, hspace=0.12)
    for i in range(nr):
        for j in range(nc):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if cells[i][j] is not None:
                with Image.open(cells[i][j]) as im:
                    ax.imshow(im.convert("RGB"))
            else:
                ax.text(0.5, 0.5, "missing", ha="center", va="center", fontsize=8)
            if i == 0:
                ax.set_title(col_labels[j][:28], fontsize=7)
            if j == 0:
                text = row_labels[i]
                ax.set_ylabel(text if len(text) <= 35 else text[:34] + "…", fontsize=6, rotation=0, ha="right",
                              va="center")
    _finish(fig, path, title, mixed)


# ---------------------------------------------------------------------------- Markdown and HTML
def _md_table(t: Table) -> str:
    d = t.display()
    cols = [str(c).replace("|", "\\|") for c in d.columns]
    lines = [f"**{t.title}** (`{t.name}.csv`)", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in d.itertuples(index=False):
        lines.append("| " + " | ".join(str(v).replace("|", "\\|").replace("\n", " ") for v in row) + " |")
    if t.note:
        lines += ["", f"*{t.note}*"]
    return "\n".join(lines)


def _html_table(t: Table) -> str:
    d = t.display()
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in d.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
                   for row in d.itertuples(index=False))
    cls = ' class="tbl published"' if t.name.startswith("published_") else ' class="tbl"'
    note = f'<p class="note">{html.escape(t.note)}</p>' if t.note else ""
    return (f"<div{cls}><h3>{html.escape(t.title)}</h3><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table>{note}</div>")


_CSS = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:1em auto;padding:0 1em;color:#222}"
        "h1{font-size:1.5em;margin:.3em 0}table{border-collapse:collapse;font-size:13px;margin:.5em 0}th,td{border:1px "
        "solid #ccc;padding:3px 7px;text-align:left}th{background:#f2f2f2}.note{font-size:12px;color:#555}.published"
        "{border-left:4px solid #c80;padding-left:8px;background:#fffaf0}.mixed{color:#fff;background:crimson;"
        "padding:6px;font-weight:bold}img{max-width:100%}.headline{border-left:4px solid #2a6;padding-left:10px}"
        ".headline h2{margin:.2em 0}.headline h3{display:none}.answer{margin:.35em 0;font-size:14px}"
        "details pre{white-space:pre-wrap;word-break:break-all;font-size:12px}.tbl{overflow-x:auto}")
_MIXED_BANNER = f"{MIXED}: the compared runs were timed on different devices; GPU-hours are not comparable."


def _blocks(s: Section, out: Path, md: list[str], hb: list[str]) -> None:
    for b in s.blocks:
        if isinstance(b, Table):
            md += [_md_table(b), ""]
            hb.append(_html_table(b))
        elif isinstance(b, Figure):
            md += [f"![{b.caption}]({b.file})", "", f"*{b.caption}*", ""]
            data = base64.b64encode((out / b.file).read_bytes()).decode()
            hb.append(f'<figure><img alt="{html.escape(b.caption)}" src="data:image/png;base64,{data}">'
                      f'<figcaption class="note">{html.escape(b.caption)}</figcaption></figure>')
        elif isinstance(b, Answer):
            md += [f"- **{b.question}** {b.text}", ""]
            hb.append(f'<p class="answer"><b>{html.escape(b.question)}</b> {html.escape(b.text)}</p>')
        else:
            md += [str(b), ""]
            hb.append(f"<p>{html.escape(str(b))}</p>")


def render(sections: list[Section], header: list[str], how: list[str], notes: list[str], out: Path,
           mixed: bool, *, top: Section | None = None, command: tuple[str, str] | None = None,
           lead: Sequence[str] = ()) -> tuple[str, str]:
    """(report.md, report.html): ``top`` (the headline) first, after the ``lead`` caveats; then provenance
    (``header``, and ``command`` = (summary, text) in a collapsed block), how to read, the sections and the
    notes. The HTML embeds every figure of ``out`` as a data URI."""
    md = ["# lpo-bench comparison report", ""]
    hb = ['<!DOCTYPE html><html><head><meta charset="utf-8"><title>lpo-bench comparison report</title>',
          f"<style>{_CSS}</style></head><body><h1>lpo-bench comparison report</h1>"]
    if mixed:
        md += [f"**{_MIXED_BANNER}**", ""]
        hb.append(f'<p class="mixed">{html.escape(_MIXED_BANNER)}</p>')
    md += [f"*{x}*" for x in lead] + ([""] if lead else [])
    hb += [f'<p class="note"><b>{html.escape(x)}</b></p>' for x in lead]
    if top is not None:
        md += [f"## {top.title}", ""]
        hb.append(f'<section class="headline"><h2>{html.escape(top.title)}</h2>')
        _blocks(top, out, md, hb)
        hb.append("</section>")
    md += ["## Provenance", ""] + [f"- {h}" for h in header] + [""]
    hb.append("<h2>Provenance</h2><ul>" + "".join(f"<li>{html.escape(h)}</li>" for h in header) + "</ul>")
    if command is not None:
        summary, text = command
        md += [f"<details><summary>{html.escape(summary)}</summary>", "", "```", text, "```", "", "</details>", ""]
        hb.append(f"<details><summary>{html.escape(summary)}</summary><pre>{html.escape(text)}</pre></details>")
    md += ["## How to read this", ""] + [f"- {h}" for h in how] + [""]
    hb.append("<h2>How to read this</h2><ul>" + "".join(f"<li>{html.escape(h)}</li>" for h in how) + "</ul>")
    for s in sections:
        md += [f"## {s.title}", ""]
        hb.append(f"<h2>{html.escape(s.title)}</h2>")
        _blocks(s, out, md, hb)
    if notes:
        md += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
        hb.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    hb.append("</body></html>")
    return "\n".join(md), "\n".join(hb)
