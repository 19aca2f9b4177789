"""Saved evaluation images: T2I-CompBench file names, 8-bit conversion, PNG files and preview grids.

Image ``k`` of the prompt with index ``i`` in its category is saved as
``images/<category>/samples/<prompt>_<NNNNNN>.png`` with ``NNNNNN = i * images_per_prompt + k``: the
naming T2I-CompBench's scripts parse (``images/<category>`` is their ``--outpath``), used for every suite.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lpo_bench.data.suites import PromptItem
from lpo_bench.metrics import compbench_rules

GRID_MAX_IMAGES = 64
MAX_NAME_CHARS = 180  # keeps "<prompt>_<NNNNNN>.png" under common 255-byte file-name limits
IMAGE_NAMING = ("images/<category>/samples/<prompt>_<prompt index in category * images_per_prompt + "
                "image_idx, 6 digits>.png (T2I-CompBench)")


def image_file_name(prompt: str, question_id: int) -> str:
    """``<prompt>_<NNNNNN>.png``. Characters a file name cannot hold ("/", "\\", control characters, and "_",
    which the official parser splits on) become spaces; prompts are cut at ``MAX_NAME_CHARS``. T2I-CompBench's
    val prompts (Karine-Huang/T2I-CompBench@1b70949, ``examples/dataset/*_val.txt``) hold none of these
    characters and are at most 151 characters long, so their names are exact."""
    safe = "".join(" " if (ch in "/\\_" or ord(ch) < 32) else ch for ch in prompt)[:MAX_NAME_CHARS]
    return compbench_rules.image_file_name(safe, question_id)


def image_question_id(item: PromptItem, image_idx: int, images_per_prompt: int) -> int:
    """The number of image ``image_idx`` of ``item`` in its category's file names."""
    return compbench_rules.question_id(item.index, image_idx, images_per_prompt)


def to_uint8(images: Any) -> Any:
    """[b,3,H,W] in [0,1] (already 8-bit quantised) -> uint8 numpy [b,H,W,3]."""
    import torch

    return (images * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def save_images(out_dir: Path, jobs: Sequence[tuple[PromptItem, int]], images_u8: Any, images_per_prompt: int) -> None:
    """Save image ``images_u8[j]`` of job ``(item, image_idx)`` under ``out_dir/<category>/samples``."""
    from PIL import Image

    for (it, k), arr in zip(jobs, images_u8, strict=True):
        name = image_file_name(it.text, image_question_id(it, k, images_per_prompt))
        Image.fromarray(arr).save(out_dir / it.category / "samples" / name)


def save_grid(path: Path, images_u8: Any, ncol: int = 8) -> None:
    """Tile uint8 images [n,H,W,3] into one PNG (rows of ``ncol``)."""
    import numpy as np
    from PIL import Image

    n, h, w, _ = images_u8.shape
    rows = (n + ncol - 1) // ncol
    grid = np.full((rows * h, min(n, ncol) * w, 3), 255, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, ncol)
        grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = images_u8[i]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
