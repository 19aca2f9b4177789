"""Image grids: the same prompts and image seeds side by side across the models of an evaluation group."""

from __future__ import annotations

from pathlib import Path

from lpo_bench.analysis.render import Figure, plot_grid, slug
from lpo_bench.analysis.runs import Run

GRID_PROMPTS = 6


def _image_index(r: Run) -> dict[tuple[str, str], list[int]]:
    """(category, file-name prompt) -> question ids of the eval run's saved images."""
    idx: dict[tuple[str, str], list[int]] = {}
    root = r.path / "images"
    if not root.is_dir():
        return idx
    for cat_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in (cat_dir / "samples").glob("*.png"):
            stem, _, qid = f.stem.rpartition("_")
            if qid.isdigit():
                idx.setdefault((cat_dir.name, stem), []).append(int(qid))
    return idx


def _image_path(r: Run, idx: dict[tuple[str, str], list[int]], category: str, prompt: str,
                image_idx: int) -> Path | None:
    """The saved image of (prompt, image_idx), found by the evaluation's naming (None when ambiguous)."""
    from lpo_bench.evaluation import image_file_name

    stem = image_file_name(prompt, 0).rpartition("_")[0]
    ipp = int(r.info.get("images_per_prompt") or 1)
    qids = [q for q in idx.get((category, stem), []) if q % ipp == image_idx]
    if len(qids) != 1:
        return None
    return r.path / "images" / category / "samples" / image_file_name(prompt, qids[0])


def image_grid(runs: list[Run], out: Path, tag: str, mixed: bool, notes: list[str]) -> Figure | None:
    """The same prompts and image seeds across models (image 0 of up to GRID_PROMPTS prompts, one per
    category in turn)."""
    with_images = [r for r in runs if (r.path / "images").is_dir()]
    if len(runs) < 2:
        return None
    if len(with_images) < 2:
        notes.append(f"no image grid for {tag}: fewer than two of its eval runs saved images")
        return None
    ps = with_images[0].per_sample()
    if ps is None or not {"prompt_id", "prompt", "category", "image_idx"} <= set(ps.columns):
        notes.append(f"no image grid for {tag}: per_sample.parquet lacks prompt texts to find the images by")
        return None
    firsts = ps[ps["image_idx"] == 0].drop_duplicates("prompt_id")
    by_cat = {c: list(g.itertuples()) for c, g in firsts.groupby("category", sort=False)}
    chosen = []
    while len(chosen) < GRID_PROMPTS and any(by_cat.values()):
        for c in list(by_cat):
            if by_cat[c] and len(chosen) < GRID_PROMPTS:
                chosen.append(by_cat[c].pop(0))
    idx = {r.run_id: _image_index(r) for r in with_images}
    cells = [[_image_path(r, idx[r.run_id], str(p.category), str(p.prompt), 0) for r in with_images] for p in chosen]
    if not any(c is not None for row in cells for c in row):
        notes.append(f"no image grid for {tag}: saved images could not be matched to prompts")
        return None
    name = f"grid_{slug(tag)}.png"
    plot_grid(out / name, cells, [str(p.prompt) for p in chosen], [_column_label(r.model()[1]) for r in with_images],
              f"Same prompts and seeds across models ({tag}, image 0)", mixed)
    return Figure(name, "Rows: prompts (image 0, the same seed for every model); columns: models.")


def _column_label(label: str) -> str:
    """A model's label without its run id ("lpo s0 (lpo-toy-...-s0)" -> "lpo s0"), keeping a control's own
    parenthesis ("diffusion-dpo (flipped preferences) s0 (...)" -> "diffusion-dpo (flipped preferences) s0")."""
    head, sep, tail = label.rpartition(" (")
    return head if sep and tail.endswith(")") and head else label
