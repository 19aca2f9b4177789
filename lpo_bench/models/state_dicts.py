"""Strict loading of checkpoints written by other code: read a state dict from any of the published formats,
check its keys and shapes against the model it goes into, and refuse any difference in one line.

Used by the importers of released checkpoints (:mod:`lpo_bench.models.released` and the method folders'
``released`` modules).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lpo_bench.errors import HarnessError

if TYPE_CHECKING:
    import torch


def check_state_dict(expected: Mapping[str, Sequence[int]], got: Mapping[str, Sequence[int]], *, source: str,
                     layout: str) -> None:
    """Strict key and shape check of a checkpoint against the model it is loaded into.

    expected / got: key -> shape (e.g. ``{"conv_in.weight": (320, 4, 3, 3)}``). Passes when both have the same
    keys with the same shapes; otherwise raises one HarnessError line counting the missing keys, the unexpected
    keys and the shape mismatches, naming the first of each, and the ``layout`` that was expected.
    """
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shapes = [k for k in expected if k in got and tuple(got[k]) != tuple(expected[k])]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s), first {missing[0]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s), first {unexpected[0]}")
    if shapes:
        k = shapes[0]
        problems.append(f"{len(shapes)} shape mismatch(es), first {k} {list(got[k])} (expected {list(expected[k])})")
    if problems:
        raise HarnessError(f"{source} does not have the expected layout ({layout}): {'; '.join(problems)}; pass the "
                           f"checkpoint as its authors published it")


def shapes_of(state: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(getattr(v, "shape", ())) for k, v in state.items()}


def drop_position_ids(state: dict[str, torch.Tensor], expected: Mapping[str, Any],
                      source: str) -> dict[str, torch.Tensor]:
    """Without the ``*embeddings.position_ids`` buffers the model does not expect (transformers < 4.31 saved
    them; later versions do not): each must be ``arange(n)`` [1, n], else it would change the outputs."""
    import torch

    out = dict(state)
    for k in [k for k in state if k.endswith("embeddings.position_ids") and k not in expected]:
        v = out.pop(k)
        if not torch.equal(v.reshape(-1).long(), torch.arange(v.numel())):
            raise HarnessError(f"{source}: buffer {k} is not arange({v.numel()}); this checkpoint changes the "
                               f"position ids, which lpo-bench cannot reproduce")
    return out


def read_state_dict(path: Path) -> dict[str, Any]:
    """A checkpoint file as a dict: safetensors, a sharded ``*.index.json``, or a torch pickle (``.bin``, ``.pt``)
    read with ``weights_only=True`` (a pickle holding anything but tensors and plain containers is refused)."""
    import torch
    from safetensors.torch import load_file

    try:
        if path.name.endswith(".index.json"):
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
            return {k: v for s in shards for k, v in read_state_dict(path.parent / s).items()}
        if path.suffix == ".safetensors":
            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except HarnessError:
        raise
    except Exception as exc:
        why = str(exc).splitlines()[0][:160] if str(exc) else ""
        raise HarnessError(f"could not read {path}: {type(exc).__name__}: {why}"
                           f"; re-download it (pickles holding more than tensors are refused)") from None


def load_strict(module: Any, state: Mapping[str, Any], *, source: str, layout: str,
                normalise: Callable[[str], str] | None = None) -> None:
    """:func:`check_state_dict`, then ``load_state_dict(strict=True)`` in the module's own dtype.

    ``normalise``: a key renaming applied to both sides before comparing, for names that differ between library
    versions only (e.g. :func:`strip_text_model`); keys are then matched by their normalised names.
    """
    own = module.state_dict()
    norm = normalise or (lambda k: k)
    own_by, got_by = {norm(k): k for k in own}, {norm(k): k for k in state}
    if len(got_by) != len(state):
        raise HarnessError(f"{source} holds the same weight under two names ({layout}); pass the official file")
    check_state_dict({n: tuple(own[k].shape) for n, k in own_by.items()},
                     {n: tuple(getattr(state[k], "shape", ())) for n, k in got_by.items()},
                     source=source, layout=layout)
    module.load_state_dict({own_by[n]: state[k].to(own[own_by[n]].dtype) for n, k in got_by.items()}, strict=True)


def strip_text_model(key: str) -> str:
    """``text_model.X`` -> ``X``: transformers 4.x saved ``CLIPTextModel`` weights under ``text_model.``, 5.x
    without; the weights are the same."""
    return key[len("text_model."):] if key.startswith("text_model.") else key
