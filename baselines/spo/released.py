"""The SPO authors' released checkpoints as ``released:<name>`` entries, and the importer of the official
step-aware preference model (SPM) layout.

Published (RockeyCoss/SPO@27a8642, README "Available Checkpoints" and spo_training_and_inference/README.md):

* SPO models: full diffusers pipelines ``SPO-Diffusion-Models/SPO-SD-v1-5_4k-p_10ep`` and
  ``SPO-Diffusion-Models/SPO-SDXL_4k-p_10ep`` (LoRA merged; SPO trains the UNet only, so only ``unet/`` is
  imported and the backbone's pinned text encoders and VAE are used, as LPO's evaluation script does for SDXL's
  fp16-fix VAE). The ``*_LoRA`` repos hold the same models as LoRA and are not entries here.
* SPMs: ``SPO-Diffusion-Models/Step-Aware_Preference_Models`` files ``sd-v1-5_step-aware_preference_model.bin``
  and ``sdxl_step-aware_preference_model.bin``: the fp32 state dict DeepSpeed's
  ``convert_zero_checkpoint_to_fp32_state_dict`` writes from the trainer's ``StepAwarePreferenceModel``
  (``step_aware_preference_model/trainer/scripts/train_spm.py``), so every key starts with ``model.`` (its
  ``HFTimeConditionedCLIPModel``)::

      model.text_model.*, model.vision_model.{embeddings,pre_layrnorm,post_layernorm}.*   CLIP ViT-H/14 (PickScore_v1)
      model.vision_model.encoder.layers.<i>.{self_attn,layer_norm1,mlp,layer_norm2}.*
      model.vision_model.encoder.layers.<i>.adaLN_modulation.1.{weight,bias}   [6H, H]: shift/scale/gate x attn, mlp
      model.vision_model.adaLN_modulation.1.{weight,bias}                      [2H, H]: shift, scale after post-LN
      model.t_embedder.mlp.{0,2}.{weight,bias}                                 DiT timestep embedder (256 freqs)
      model.visual_projection.weight, model.text_projection.weight, model.logit_scale
      (model.*.embeddings.position_ids: saved by transformers < 4.31; checked to be arange and dropped)

  The official inference wrapper (``spo/preference_models/models/step_aware_preference_model.py``) builds the
  architecture from ``yuvalkirstain/PickScore_v1`` and loads this file requiring no missing key and tolerating
  only unexpected keys equal to the model's; the importer here takes PickScore_v1's ``config.json`` and the
  LAION CLIP-H tokenizer (the files the PickScore metric pins) and is strict.
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
    diffusers_unet_files,
)

PAPER = ("Liang et al., Aesthetic Post-Training Diffusion Models from Generic Preferences with Step-by-step "
         "Preference Optimization, arXiv 2406.04314 (CVPR 2025)")
CODE = "RockeyCoss/SPO@27a86428edcf"
PIN_NOTE = ("the authors publish no sha256 or commit for the SPO-Diffusion-Models repos, and the hub cannot be "
            "read offline")
SPM_GUIDANCE = 5.0  # CFG of the x0 prediction the SPM scores (SPO's sampling CFG)
# LPO's re-evaluation (Kwai-Kolors/LPO evaluation/general_score_pap_val.py) sampled both SPO models at CFG 5.
PROTOCOL = PaperProtocol(guidance_scale=5.0, num_inference_steps=20,
                         note="LPO's re-evaluation: DDIM eta 0, seed 42, 1 image per prompt scored; SPO's own "
                              "numbers come from its unreleased evaluation code")
SPM_LAYOUT = "one torch pickle of the trainer's StepAwarePreferenceModel state dict (keys model.*)"


def _spm(name: str, backbone: str, file: str) -> ReleasedModel:
    return ReleasedModel(
        name=name, kind=STEP_REWARD_MODEL, reward_model="spm", backbone=backbone,
        repo_id="SPO-Diffusion-Models/Step-Aware_Preference_Models", revision=None, files=(ReleasedFile(file),),
        importer="lpo_bench.baselines.spo.released:import_spm", summary=f"the SPO authors' SPM for {backbone}",
        source=CODE, layout=f"{file}: {SPM_LAYOUT}", pin_note=PIN_NOTE, method="spo", paper=PAPER)


def _spo(name: str, backbone: str, repo: str, rows: tuple[str, ...]) -> ReleasedModel:
    return ReleasedModel(
        name=name, kind=UNET, backbone=backbone, repo_id=repo, revision=None, files=diffusers_unet_files("unet"),
        importer="lpo_bench.models.released:import_diffusers_unet",
        summary=f"the authors' SPO-optimised {backbone} UNet (LoRA merged, 4k prompts, 10 epochs)", source=CODE,
        layout="unet/: diffusers UNet2DConditionModel (config.json + diffusion_pytorch_model.*) of a full pipeline",
        pin_note=PIN_NOTE, method="spo", paper=PAPER, protocol=PROTOCOL, published_rows=rows)


_ROWS = ("tab2:SPO (re-evaluated)", "tab2:SPO (SPO paper)", "tab2-geneval-20:SPO (re-evaluated)",
         "tab2-geneval-50:SPO (re-evaluated)", "tab2-geneval-50:SPO (SPO paper)", "tab3:SPO")
SPM_SD15 = _spm("spm-sd15", "sd15", "sd-v1-5_step-aware_preference_model.bin")
SPM_SDXL = _spm("spm-sdxl", "sdxl", "sdxl_step-aware_preference_model.bin")
SPO_SD15 = _spo("spo-sd15", "sd15", "SPO-Diffusion-Models/SPO-SD-v1-5_4k-p_10ep", _ROWS)
SPO_SDXL = _spo("spo-sdxl", "sdxl", "SPO-Diffusion-Models/SPO-SDXL_4k-p_10ep", _ROWS)


def official_key(key: str) -> str:
    """The official checkpoint's name of our SPM state-dict key (module docstring):
    ``adaln.<i>.*`` -> ``model.vision_model.encoder.layers.<i>.adaLN_modulation.*``,
    ``final_adaln.*`` -> ``model.vision_model.adaLN_modulation.*``, ``clip.*`` -> ``model.*``,
    ``t_embedder.*`` -> ``model.t_embedder.*``."""
    if key.startswith("adaln."):
        i, rest = key[len("adaln."):].split(".", 1)
        return f"model.vision_model.encoder.layers.{i}.adaLN_modulation.{rest}"
    if key.startswith("final_adaln."):
        return "model.vision_model.adaLN_modulation." + key[len("final_adaln."):]
    if key.startswith("clip."):
        return "model." + key[len("clip."):]
    return "model." + key


def spm_skeleton(weights_dir: Any = None, allow_download: bool | None = None) -> Any:
    """An SPM with PickScore_v1's architecture (its ``config.json`` only) and the LAION CLIP-H tokenizer, weights
    uninitialised (every tensor is then loaded from the release)."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer
    from transformers.initialization import no_init_weights

    from lpo_bench.baselines.spo.spm import StepAwarePreferenceModel
    from lpo_bench.metrics._common import check_vocab
    from lpo_bench.metrics.pickscore import LAION_H14_PROCESSOR, PICKSCORE_MODEL
    from lpo_bench.models.weights import resolve_snapshot

    cfg_dir = resolve_snapshot(PICKSCORE_MODEL.repo, PICKSCORE_MODEL.revision, required=("config.json",),
                               weights_dir=weights_dir, allow_download=allow_download)
    proc_dir = LAION_H14_PROCESSOR.resolve(weights_dir, allow_download)
    config = CLIPConfig.from_pretrained(cfg_dir, local_files_only=True)
    with no_init_weights():
        clip = CLIPModel(config)
    tok = CLIPTokenizer.from_pretrained(proc_dir, local_files_only=True)
    check_vocab(len(tok), int(config.text_config.vocab_size), str(proc_dir))
    tok.model_max_length = int(config.text_config.max_position_embeddings)
    return StepAwarePreferenceModel(clip, tok, base="pickscore", guidance_scale=SPM_GUIDANCE,
                                    base_checkpoint=f"{PICKSCORE_MODEL.ref}+{LAION_H14_PROCESSOR.ref}")


def load_official_spm(model: Any, state: dict[str, Any], source: str) -> Any:
    """Load an official-layout SPM state dict into ``model`` (a StepAwarePreferenceModel), strictly: the keys
    are checked in the official naming, so an error names the file's own keys."""
    from lpo_bench.models.state_dicts import check_state_dict, drop_position_ids, shapes_of

    ours = model.state_dict()
    to_ours = {official_key(k): k for k in ours}
    state = drop_position_ids(state, to_ours, source)
    check_state_dict({o: tuple(ours[k].shape) for o, k in to_ours.items()}, shapes_of(state), source=source,
                     layout=f"the SPO trainer's StepAwarePreferenceModel state dict: {SPM_LAYOUT}")
    model.load_state_dict({to_ours[k]: v.to(ours[to_ours[k]].dtype) for k, v in state.items()}, strict=True)
    return model


def import_spm(resolved: ResolvedRelease, bundle: Any, *, device: Any, **_: Any) -> Any:
    """The released SPM of ``resolved`` as a :class:`~lpo_bench.baselines.spo.spm.StepAwarePreferenceModel`
    attached to ``bundle`` (whose UNet and VAE give it x0 predictions to score)."""
    from lpo_bench.models.state_dicts import read_state_dict

    path = resolved.paths[resolved.entry.files[0].path]
    model = spm_skeleton(resolved.weights_dir)
    load_official_spm(model, read_state_dict(path), f"{resolved.entry.ref} {path}")
    return model.to(device).eval().attach(bundle)
