"""Load a registered backbone by name (``registry.BACKBONES``): the toy model, or a pinned hub backbone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lpo_bench import registry


def load_bundle(backbone: str, *, weights_dir: str | Path | None = None, device: str = "cpu") -> Any:
    """The ModelBundle of registered backbone ``backbone`` on ``device``."""
    loader = registry.resolve("backbone", registry.check_name("backbone", backbone))
    return loader(weights_dir=weights_dir, device=device)
