"""LPO's part of one sampling step, for ``lpo-bench bench``: the LRM scoring the K candidates.

The call is the one ``LPO.scorer`` makes (``lrm.score`` on text encoded once per prompt, at the parent
timestep as in the official code); with VFE guidance the trunk runs on the conditional and the unconditional
text, so one score costs two trunk passes.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import torch

from lpo_bench.diffusion.seeding import seeded_init
from lpo_bench.harness.spec import BenchComponent, SamplingStepSetting
from lpo_bench.methods.lpo.lrm import LatentRewardModel, LRMText


def random_lrm(bundle: Any, *, full_size: bool = False, seed: int = 0) -> LatentRewardModel:
    """An LRM on ``bundle``'s denoiser with random heads (its size follows the bundle: costs, not quality)."""
    with seeded_init(seed, "bench-lrm"):
        lrm = LatentRewardModel.from_bundle(bundle)
    return lrm.to(bundle.device).eval().requires_grad_(False)


def sampling_step_components(bundle: Any, setting: SamplingStepSetting, state: dict[str, Any]
                             ) -> Iterator[BenchComponent]:
    k = setting.num_candidates
    lrm = random_lrm(bundle, full_size=setting.full_size)
    with torch.inference_mode():
        text1 = lrm.encode_text([setting.prompt])  # cached per prompt, as LPO does
        text = LRMText(text1.embeds.repeat(k), text1.feature.repeat(k, 1))
        un = lrm.negative_embeds(1).repeat(k)
    t_lrm = torch.full((k,), setting.timestep, device=bundle.device)  # official: the parent timestep
    n_params = sum(p.numel() for p in lrm.parameters())
    label = (f"LatentRewardModel.from_bundle ({n_params / 1e6:.4g} M params, VFE gs {lrm.guidance_scale:g}: "
             f"trunk on cond + uncond)")
    yield BenchComponent("lrm_reward", lambda: lrm.score(state["cands"], t_lrm, text, un),
                         {"reward_fwd": k, "lrm_trunk_fwd": k * (2 if lrm.guidance_scale != 1 else 1)},
                         {"lrm": label})
    if not setting.keep_models:
        del lrm, text, un
        gc.collect()
