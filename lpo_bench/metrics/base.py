"""The protocol every metric adapter follows (real scorers and toy scorers alike).

An adapter is constructed cheaply (no weights, no heavy imports), then ``load()`` resolves
and loads its weights offline, returning a :class:`ScorerProvenance`. ``score`` returns one
number per image: per-sample scores first, aggregation happens in :mod:`lpo_bench.analysis.stats`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Protocol

import torch  # noqa: F401  (only for type annotations of the protocol)


@dataclass(frozen=True)
class ScorerProvenance:
    """What can move a score: checkpoint (``repo@revision`` or path), sha256, dtype."""

    metric_id: str
    metric_version: str
    checkpoint: str
    sha256: str
    dtype: str = "fp32"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class RewardModel(Protocol):
    id: ClassVar[str]  # "hpsv2.1"
    version: ClassVar[str]  # bumped whenever the definition changes
    higher_is_better: ClassVar[bool]

    def load(self, device: str = "cpu") -> ScorerProvenance: ...

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """images [b,3,H,W] float in [0,1]; prompts length b -> scores [b] (float32, CPU)."""
        ...
