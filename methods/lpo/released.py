"""The LPO authors' released checkpoints as ``released:<name>`` entries, and the importer of the official
Latent Reward Model layout.

Published (Kwai-Kolors/LPO@9c2e8b8, README "Pre-trained Models"): the LRMs at HF ``casiatao/LRM`` and the
LPO-optimised models at HF ``casiatao/LPO``, whose LoRA was merged into full UNets
(``lpo_sd15_merge/unet``, ``lpo_sdxl_merge/unet``, as ``evaluation/general_score_pap_val.py`` loads them).

Official LRM layout, written by ``SD15PreferenceModel.save`` / ``SDXLBasePreferenceModel.save``
(``lrm/lrm_15|lrm_xl/trainer/models/*_preference_model.py``) and read by the LPO copies' ``load``
(``lpo/lpo/preference_models/models/``)::

    <dir>/unet/             diffusers UNet2DConditionModel.save_pretrained: config.json + weights (all of the
                            UNet, up blocks included, though only the down and mid blocks ever run)
    <dir>/text_encoder/     transformers CLIPTextModel.save_pretrained (pytorch_model.bin under the LRM
                            trainer's transformers 4.27.3; model.safetensors from newer versions)
    <dir>/text_encoder_2/   SDXL only: CLIPTextModelWithProjection
    <dir>/state_dict.pt     torch.save({"visual_projection": {"weight": [768, 4800] | [1280, 3520]},
                                        "text_projection": {"weight": [768, 768]},   # SD1.5 only
                                        "logit_scale": scalar tensor})

Both released LRMs use VFE guidance 7.5 on the pooled mid feature and multi-scale pooling (the LPO configs'
``guidance_scale=7.5, multi_scale=True, multi_scale_cfg=False``), which is what
:class:`~lpo_bench.methods.lpo.lrm.LatentRewardModel` computes.
"""

from __future__ import annotations

from typing import Any

from lpo_bench.models.released import (
    STEP_REWARD_MODEL,
    UNET,
    PaperProtocol,
    ReleasedFile,
    ReleasedModel,
    ResolvedRelease,
    check_config,
    diffusers_unet_files,
)

PAPER = ("Zhang et al., Diffusion Model as a Noise-Aware Latent Reward Model for Step-Level Preference "
         "Optimization, arXiv 2502.01051 (NeurIPS 2025)")
CODE = "Kwai-Kolors/LPO@9c2e8b81418cb86cc0a78aa1dc10a5503ce59f4e"
PIN_NOTE = ("the authors publish no sha256 or commit for casiatao/LRM and casiatao/LPO, and the hub cannot be read "
            "offline")
LRM_GUIDANCE = 7.5  # VFE guidance of both released LRMs (lpo/configs/*.py)
# The paper's evaluation (evaluation/general_score_pap_val.py): DDIM 20 steps, fp16, seed 42, CFG 5 for both LPO
# models; the script scores only the first of 4 images per prompt (its zip() bug).
PROTOCOL = PaperProtocol(guidance_scale=5.0, num_inference_steps=20,
                         note="DDIM eta 0, seed 42 re-seeded per batch, 1 image per prompt scored (first of 4)")
# Architecture keys of a CLIP text config that the weights' shapes do not already fix (or that they do, named).
CLIP_TEXT_ARCH = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "hidden_act",
                  "max_position_embeddings", "vocab_size", "projection_dim", "layer_norm_eps")
LRM_LAYOUT = ("unet/ (diffusers), text_encoder/[, text_encoder_2/] (transformers), state_dict.pt with "
              "visual_projection[, text_projection], logit_scale")


def _lrm_files(folder: str, sdxl: bool) -> tuple[ReleasedFile, ...]:
    encoders = ("text_encoder", "text_encoder_2") if sdxl else ("text_encoder",)
    files = list(diffusers_unet_files(f"{folder}/unet"))
    for enc in encoders:
        files += [ReleasedFile(f"{folder}/{enc}/config.json"),
                  ReleasedFile(f"{folder}/{enc}/pytorch_model.bin",
                               alternatives=(f"{folder}/{enc}/model.safetensors",))]
    return (*files, ReleasedFile(f"{folder}/state_dict.pt"))


def _lrm(name: str, backbone: str, folder: str) -> ReleasedModel:
    return ReleasedModel(
        name=name, kind=STEP_REWARD_MODEL, reward_model="lrm", backbone=backbone, repo_id="casiatao/LRM",
        revision=None, files=_lrm_files(folder, backbone == "sdxl"),
        importer="lpo_bench.methods.lpo.released:import_lrm",
        summary=f"the authors' LRM for {backbone} (LRM-{'1.5' if backbone == 'sd15' else 'XL'})", source=CODE,
        layout=f"{folder}/: {LRM_LAYOUT}", paper=PAPER, method="lpo",
        pin_note=PIN_NOTE + f"; the folder name {folder}/ is the LPO configs' ft_model_path default, not read from "
                            f"the hub")


def _lpo(name: str, backbone: str, folder: str, row: str) -> ReleasedModel:
    return ReleasedModel(
        name=name, kind=UNET, backbone=backbone, repo_id="casiatao/LPO", revision=None,
        files=diffusers_unet_files(f"{folder}/unet"), importer="lpo_bench.models.released:import_diffusers_unet",
        summary=f"the authors' LPO-optimised {backbone} UNet (LoRA merged)", source=CODE,
        layout=f"{folder}/unet/: diffusers UNet2DConditionModel (config.json + diffusion_pytorch_model.*)",
        pin_note=PIN_NOTE, method="lpo", paper=PAPER, protocol=PROTOCOL,
        published_rows=(f"tab2:{row}", f"tab2-geneval-20:{row}", f"tab2-geneval-50:{row}",
                       f"tab25-26-geneval-tasks:{row}", f"tab3:{row}"))


LRM_SD15 = _lrm("lrm-sd15", "sd15", "lrm_sd15")
LRM_SDXL = _lrm("lrm-sdxl", "sdxl", "lrm_sdxl")
LPO_SD15 = _lpo("lpo-sd15", "sd15", "lpo_sd15_merge", "LPO")
LPO_SDXL = _lpo("lpo-sdxl", "sdxl", "lpo_sdxl_merge", "LPO")


def import_lrm(resolved: ResolvedRelease, bundle: Any, *, device: Any, **_: Any) -> Any:
    """The released LRM of ``resolved`` in the official layout (module docstring) as a
    :class:`~lpo_bench.methods.lpo.lrm.LatentRewardModel` over ``bundle``'s architecture, every tensor loaded
    strictly (a missing, unexpected or misshapen key is refused in one line)."""
    import torch

    from lpo_bench.errors import HarnessError
    from lpo_bench.methods.lpo.lrm import LatentRewardModel
    from lpo_bench.models.state_dicts import drop_position_ids, load_strict, read_state_dict, strip_text_model

    entry = resolved.entry
    model = LatentRewardModel.from_bundle(bundle, guidance_scale=LRM_GUIDANCE, multi_scale=True)
    unet_cfg = resolved.file("unet/config.json")
    check_config(unet_cfg, model.unet.config, f"{entry.ref} {unet_cfg}", bundle.name)
    w = next(resolved.paths[f.path] for f in entry.files if "/unet/diffusion_pytorch_model" in f.path)
    load_strict(model.unet, read_state_dict(w), source=f"{entry.ref} {w}",
                layout=f"the LRM's diffusers UNet of {bundle.name}")
    for i, enc in enumerate(model.text_encoders):
        sub = "text_encoder" if i == 0 else f"text_encoder_{i + 1}"
        cfg = resolved.file(f"{sub}/config.json")
        check_config(cfg, enc.config.to_dict(), f"{entry.ref} {cfg}", bundle.name, keys=CLIP_TEXT_ARCH)
        path = resolved.paths[next(f.path for f in entry.files if f"/{sub}/" in f.path and "config" not in f.path)]
        src = f"{entry.ref} {path}"
        own = {strip_text_model(k) for k in enc.state_dict()}
        state = read_state_dict(path)
        state = drop_position_ids(state, {k for k in state if strip_text_model(k) in own}, src)
        load_strict(enc, state, source=src, layout=f"transformers {type(enc).__name__} of {bundle.name}",
                    normalise=strip_text_model)
    heads_path = resolved.file("state_dict.pt")
    heads = read_state_dict(heads_path)
    src = f"{entry.ref} {heads_path}"
    want = {"visual_projection": model.visual_projection, "logit_scale": None}
    if model.text_projection is not None:
        want["text_projection"] = model.text_projection
    if not isinstance(heads, dict) or set(heads) != set(want):
        got = sorted(heads) if isinstance(heads, dict) else type(heads).__name__
        raise HarnessError(f"{src} does not have the expected layout (a dict with keys {sorted(want)}): it has "
                           f"{got}; pass the state_dict.pt the LRM trainer saved")
    for key, layer in want.items():
        if layer is not None:
            if not isinstance(heads[key], dict):
                raise HarnessError(f"{src}[{key}] is a {type(heads[key]).__name__}, expected a state dict "
                                   f"{{'weight': tensor}}; pass the state_dict.pt the LRM trainer saved")
            load_strict(layer, heads[key], source=f"{src}[{key}]", layout="{'weight': [out, in]} of a bias-free Linear")
    scale = torch.as_tensor(heads["logit_scale"], dtype=torch.float32)
    if scale.numel() != 1:
        raise HarnessError(f"{src}[logit_scale] has shape {list(scale.shape)}, expected a scalar; pass the official "
                           f"file")
    with torch.no_grad():
        model.logit_scale.copy_(scale.reshape(()))
    if hasattr(model, "text_projection_init") and model.text_projection is not None:
        model.text_projection_init = f"{entry.ref}:state_dict.pt"  # recorded when the model is saved
    return model.to(device).eval()
