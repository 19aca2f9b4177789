"""LoRA adapters: trainable set, reference mode, and diffusers-compatible export."""

from __future__ import annotations

import os

import pytest
import torch

from lpo_bench.errors import HarnessError
from lpo_bench.models.lora import (
    DEFAULT_TARGETS,
    LORA_WEIGHT_NAME,
    add_lora,
    export_lora,
    export_merged_unet,
    load_lora_into,
    lora_parameters,
    reference_mode,
)
from lpo_bench.models.tiny import tiny_bundle, tiny_components

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _inputs(bundle, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, *bundle.latent_shape, generator=g)
    t = torch.tensor([10, 700])
    return x, t, bundle.encode_prompts(["a photo of a cat", "a dog"])


def _perturb(params, seed=0, scale=0.3):
    """Stand-in for training: non-zero LoRA B so the adapter changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=g) * scale)


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def tuned(request):
    """(bundle with a perturbed rank-4, alpha-2 adapter, inputs, base eps, tuned eps)."""
    b = tiny_bundle(request.param)
    x, t, e = _inputs(b)
    base = b.unet_forward(x, t, e)
    params = add_lora(b.unet, rank=4, alpha=2.0)
    _perturb(params)
    return b, (x, t, e), base, b.unet_forward(x, t, e)


def test_add_lora_trainable_set_and_identity_init():
    b = tiny_bundle("sd15")
    x, t, e = _inputs(b)
    base = b.unet_forward(x, t, e)
    params = add_lora(b.unet, rank=4)
    names = {n for n, p in b.unet.named_parameters() if p.requires_grad}
    assert names and all(".lora_A.default." in n or ".lora_B.default." in n for n in names)
    assert len(params) == len(names) == len(lora_parameters(b.unet))
    assert all(p.dtype == torch.float32 and p.requires_grad for p in params)
    # Every attention projection got an adapter: 4 targets x (A, B) per attention module.
    n_attn = sum(1 for n, _ in b.unet.named_modules() if n.endswith(("attn1", "attn2")))
    assert len(params) == n_attn * 4 * 2
    # B = 0 at init: the adapted UNet equals the base.
    assert torch.equal(b.unet_forward(x, t, e), base)
    lora_b = [p for n, p in b.unet.named_parameters() if "lora_B" in n]
    assert all(p.abs().sum() == 0 for p in lora_b)


def test_gradients_flow_only_into_lora_params():
    b = tiny_bundle("sd15")
    x, t, e = _inputs(b)
    params = add_lora(b.unet, rank=2)
    _perturb(params, scale=0.1)
    b.unet_forward(x, t, e).pow(2).mean().backward()
    lora_ids = {id(p) for p in params}
    for n, p in b.unet.named_parameters():
        if id(p) in lora_ids:
            assert p.grad is not None and torch.isfinite(p.grad).all(), n
        else:
            assert p.grad is None, n
    assert sum(float(p.grad.abs().sum()) for p in params) > 0
    for enc in b.text_encoders:
        assert all(p.grad is None for p in enc.parameters())


def test_lora_params_stay_fp32_on_a_bf16_unet():
    b = tiny_bundle("sd15")
    unet = b.unet.to(torch.bfloat16)
    params = add_lora(unet, rank=2)
    assert all(p.dtype == torch.float32 for p in params)
    x, t, e = _inputs(b)
    out = b.unet_forward(x.bfloat16(), t, e.to("cpu", torch.bfloat16))
    assert out.dtype == torch.bfloat16
    out.float().mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in params)


def test_reference_mode_is_the_base_unet_and_restores(tuned):
    b, (x, t, e), base, out = tuned
    assert not torch.allclose(out, base, atol=1e-3)
    with reference_mode(b.unet):
        assert torch.equal(b.unet_forward(x, t, e), base)
    assert torch.equal(b.unet_forward(x, t, e), out)
    with pytest.raises(RuntimeError, match="boom"):
        with reference_mode(b.unet):
            raise RuntimeError("boom")
    assert torch.equal(b.unet_forward(x, t, e), out)
    # A UNet whose adapters were already off stays off after a nested reference block.
    b.unet.disable_adapters()
    try:
        with reference_mode(b.unet):
            pass
        assert torch.equal(b.unet_forward(x, t, e), base)
    finally:
        b.unet.enable_adapters()
    assert torch.equal(b.unet_forward(x, t, e), out)


def test_exported_lora_loads_into_a_diffusers_pipeline(tuned, tmp_path):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    b, (x, t, e), base, out = tuned
    f = export_lora(b.unet, tmp_path / "lora")
    assert f == tmp_path / "lora" / LORA_WEIGHT_NAME and f.exists()
    family = "sdxl" if b.text_kind == "sdxl" else "sd15"
    comps = tiny_components(family)  # same seed: same base weights as the tuned bundle
    if family == "sdxl":
        pipe = StableDiffusionXLPipeline(**comps)
    else:
        pipe = StableDiffusionPipeline(
            **comps, safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
    assert torch.allclose(b.unet_forward(x, t, e, unet=pipe.unet), base, atol=1e-6)
    pipe.load_lora_weights(tmp_path / "lora")
    # alpha=2 != rank=4: equality needs the stored LoRA config (scale alpha/rank).
    assert torch.allclose(b.unet_forward(x, t, e, unet=pipe.unet), out, atol=1e-5)


def test_load_lora_into_a_fresh_unet(tuned, tmp_path):
    b, (x, t, e), _, out = tuned
    export_lora(b.unet, tmp_path / "lora")
    unet = tiny_components("sdxl" if b.text_kind == "sdxl" else "sd15")["unet"]
    load_lora_into(unet, tmp_path / "lora")
    assert torch.allclose(b.unet_forward(x, t, e, unet=unet), out, atol=1e-5)
    with pytest.raises(HarnessError, match="no LoRA weights"):
        load_lora_into(unet, tmp_path / "nothing-here")


def test_merged_unet_matches_and_keeps_the_live_adapter(tuned, tmp_path):
    from diffusers import UNet2DConditionModel

    b, (x, t, e), base, out = tuned
    export_merged_unet(b.unet, tmp_path / "merged")
    merged = UNet2DConditionModel.from_pretrained(tmp_path / "merged")
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert torch.allclose(b.unet_forward(x, t, e, unet=merged), out, atol=1e-5)
    assert torch.equal(b.unet_forward(x, t, e), out)  # live adapter untouched
    with reference_mode(b.unet):
        assert torch.equal(b.unet_forward(x, t, e), base)


def test_bad_lora_requests_are_harness_errors():
    b = tiny_bundle("sd15")
    with pytest.raises(HarnessError, match="rank"):
        add_lora(b.unet, rank=0)
    with pytest.raises(HarnessError, match="reference_mode"):
        with reference_mode(b.unet):
            pass
    with pytest.raises(HarnessError, match="no LoRA adapter"):
        export_lora(b.unet, "unused")


def test_exported_lora_metadata_is_sorted(tuned, tmp_path):
    import json

    from safetensors import safe_open

    f = export_lora(tuned[0].unet, tmp_path / "lora")
    with safe_open(str(f), "pt") as fh:
        meta = json.loads(fh.metadata()["lora_adapter_metadata"])
    assert meta["unet.target_modules"] == sorted(DEFAULT_TARGETS)  # a set in peft: written in hash order before


# Seeded weights on a small UNet, exported to argv[1]: only the process (its string hash seed) differs.
_EXPORT_SCRIPT = """
import sys
import torch
from diffusers import UNet2DConditionModel
from lpo_bench.models.lora import add_lora, export_lora
torch.manual_seed(0)
unet = UNet2DConditionModel(sample_size=8, block_out_channels=(8, 16), layers_per_block=1, cross_attention_dim=8,
                            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=2, norm_num_groups=4)
with torch.no_grad():
    for p in add_lora(unet, rank=2):
        p.add_(0.1)
export_lora(unet, sys.argv[1])
"""


@pytest.mark.slow
def test_exports_of_the_same_weights_are_byte_identical_across_processes(tmp_path):
    import subprocess
    import sys

    # hash seeds 1 and 2 iterate the target-module set in different orders (checked on the unsorted export)
    procs = [subprocess.Popen([sys.executable, "-c", _EXPORT_SCRIPT, str(tmp_path / s)],
                              env={**os.environ, "PYTHONHASHSEED": s}, stderr=subprocess.PIPE) for s in ("1", "2")]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]
    a, b = ((tmp_path / s / LORA_WEIGHT_NAME).read_bytes() for s in ("1", "2"))
    assert a == b
