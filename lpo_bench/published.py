"""The LPO paper's published numbers (``data/published.toml``), as data.

Reports show a published table beside measured numbers only when its ``backbone_id`` (and, for
quality tables, its suite) matches the runs, labelled "published (paper)"; published values never
enter a measured table. See the TOML header for the layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import tomllib

from lpo_bench.errors import HarnessError

PUBLISHED_PATH = Path(__file__).parent / "data" / "published.toml"
TABLE_KINDS = ("quality", "cost", "step_cost")


@dataclass(frozen=True)
class PublishedColumn:
    key: str
    label: str
    metric: str  # harness metric id, or a paper-only id that no harness metric carries
    category: str


@dataclass(frozen=True)
class PublishedRow:
    label: str
    method: str  # harness method name, "base" for the original model, "" when the harness has none
    backbone: str
    backbone_id: str
    values: tuple[float, ...]
    note: str = ""  # a row-specific protocol detail (e.g. another CFG) or a published ratio


@dataclass(frozen=True)
class PublishedTable:
    id: str
    kind: str
    title: str
    suite: str
    units: str
    protocol: str
    note: str
    columns: tuple[PublishedColumn, ...]
    rows: tuple[PublishedRow, ...]


@dataclass(frozen=True)
class Published:
    version: int
    citation: str
    source: dict[str, str]
    tables: tuple[PublishedTable, ...]

    def matching(self, kind: str, backbone_id: str, suite: str | None = None) -> list[PublishedTable]:
        """Tables of ``kind`` restricted to rows of ``backbone_id`` (and ``suite`` for quality tables).

        Tables with no matching row are left out, so a report never shows numbers for another
        backbone or suite.
        """
        out = []
        for t in self.tables:
            if t.kind != kind or (kind == "quality" and t.suite != suite):
                continue
            rows = tuple(r for r in t.rows if r.backbone_id and r.backbone_id == backbone_id)
            if rows:
                out.append(PublishedTable(**{**t.__dict__, "rows": rows}))
        return out


def _table(raw: dict[str, Any], path: Path) -> PublishedTable:
    cols = tuple(PublishedColumn(c["key"], c["label"], c["metric"], c.get("category", "")) for c in raw["columns"])
    if raw["kind"] not in TABLE_KINDS:
        raise HarnessError(f"{path}: table {raw['id']} has kind {raw['kind']!r}; use one of {', '.join(TABLE_KINDS)}")
    rows = []
    for r in raw["rows"]:
        if len(r["values"]) != len(cols):
            raise HarnessError(f"{path}: table {raw['id']} row {r['label']!r} has {len(r['values'])} values for "
                               f"{len(cols)} columns; fix the row")
        rows.append(PublishedRow(r["label"], r["method"], r["backbone"], r["backbone_id"],
                                 tuple(float(v) for v in r["values"]), r.get("note", "")))
    return PublishedTable(raw["id"], raw["kind"], raw["title"], raw["suite"], raw["units"], raw["protocol"],
                          raw.get("note", ""), cols, tuple(rows))


@lru_cache(maxsize=4)
def load_published(path: Path = PUBLISHED_PATH) -> Published:
    """Parse and check the published-numbers file (cached per path)."""
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise HarnessError(f"cannot read published numbers {path}: {exc}; reinstall lpo-bench") from None
    src = raw["source"]
    tables = tuple(_table(t, Path(path)) for t in raw["table"])
    return Published(int(raw["version"]), src["citation"], dict(src), tables)
