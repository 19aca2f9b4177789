"""Training prompts per backbone: the toy world's train split, or the 4k Pick-a-Pic prompts of SPO/LPO."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Toy prompt splits are part of the toy world's definition: changing these changes every toy number.
TOY_SPLIT_SEED = 0
TOY_SPLIT_SIZES = {"train": 2048, "val": 256, "test": 256}


def toy_prompt_splits() -> dict[str, list[str]]:
    from lpo_bench.toy import world

    s = world.prompt_splits(TOY_SPLIT_SIZES["train"], TOY_SPLIT_SIZES["val"], TOY_SPLIT_SIZES["test"], seed=TOY_SPLIT_SEED)
    return {k: [p.text for p in v] for k, v in s.items()}


def training_prompts(backbone: str, *, data_dir: Path | None = None, limit: int | None = None) -> list[str]:
    """Prompts a step-level method trains on (toy: toy train split; real: 4k_training_prompts.json)."""
    if backbone == "toy":
        prompts = toy_prompt_splits()["train"]
    else:
        from lpo_bench.data.datasets import load_train_prompts_4k

        prompts = load_train_prompts_4k(data_dir=data_dir)
    return prompts[:limit] if limit else prompts


@dataclass(frozen=True)
class BackbonePrompts:
    """The training prompts of a backbone: the toy train split for ``toy``, the 4k LPO/SPO prompts otherwise."""

    backbone: str
    data_dir: Path | None = None

    def training_prompts(self, limit: int | None = None) -> list[str]:
        return training_prompts(self.backbone, data_dir=self.data_dir, limit=limit)


@dataclass(frozen=True)
class PromptList:
    """A fixed list of training prompts (tests, or a user's own prompt file)."""

    prompts: tuple[str, ...]

    def training_prompts(self, limit: int | None = None) -> list[str]:
        return list(self.prompts[:limit] if limit else self.prompts)
