"""The Diffusion-DPO authors' released UNets as ``released:<name>`` entries.

Published (SalesforceAIResearch/DiffusionDPO@5233e75, README "Model Checkpoints"): ``mhdang/dpo-sd1.5-text2image-v1``
and ``mhdang/dpo-sdxl-text2image-v1``, each a diffusers UNet under ``unet/`` (``config.json`` +
``diffusion_pytorch_model.safetensors``, the two files ``upload_model_to_hub.py`` uploads; loaded with
``UNet2DConditionModel.from_pretrained(repo, subfolder="unet")`` in the repo's ``quick_samples.ipynb`` and in
LPO's evaluation script). Full fine-tuning: every UNet weight differs from the base model's; text encoders and
VAE are the base model's. They are imported by the generic strict diffusers-UNet importer.
"""

from __future__ import annotations

from lpo_bench.models.released import UNET, PaperProtocol, ReleasedModel, diffusers_unet_files

PAPER = "Wallace et al., Diffusion Model Alignment Using Direct Preference Optimization, arXiv 2311.12908 (CVPR 2024)"
CODE = "SalesforceAIResearch/DiffusionDPO@5233e75919f9"
PIN_NOTE = "the authors publish no sha256 or commit for the mhdang repos, and the hub cannot be read offline"
_NOTE = ("LPO's re-evaluation (Kwai-Kolors/LPO evaluation/general_score_pap_val.py): DDIM eta 0, seed 42, "
         "1 image per prompt")
_ROWS = ("tab2:Diffusion-DPO", "tab2-geneval-20:Diffusion-DPO", "tab2-geneval-50:Diffusion-DPO",
         "tab3:Diffusion-DPO")


def _dpo(name: str, backbone: str, repo: str, guidance_scale: float) -> ReleasedModel:
    return ReleasedModel(
        name=name, kind=UNET, backbone=backbone, repo_id=repo, revision=None, files=diffusers_unet_files("unet"),
        importer="lpo_bench.models.released:import_diffusers_unet",
        summary=f"the authors' Diffusion-DPO {backbone} UNet (full fine-tuning on Pick-a-Pic v2)", source=CODE,
        layout="unet/: diffusers UNet2DConditionModel (config.json + diffusion_pytorch_model.safetensors)",
        pin_note=PIN_NOTE, method="diffusion-dpo", paper=PAPER, published_rows=_ROWS,
        protocol=PaperProtocol(guidance_scale=guidance_scale, num_inference_steps=20, note=_NOTE))


# LPO's evaluation samples the SD1.5 Diffusion-DPO model at CFG 7.5 (as its SD1.5 base), the SDXL one at CFG 5.
DPO_SD15 = _dpo("diffusion-dpo-sd15", "sd15", "mhdang/dpo-sd1.5-text2image-v1", 7.5)
DPO_SDXL = _dpo("diffusion-dpo-sdxl", "sdxl", "mhdang/dpo-sdxl-text2image-v1", 5.0)
