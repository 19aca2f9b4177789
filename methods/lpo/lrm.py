"""Latent Reward Model (LRM): the diffusion UNet as a noise-aware reward model (arXiv 2502.01051;
Kwai-Kolors/LPO@9c2e8b8 lrm/lrm_15/trainer/models/).

Visual side: the UNet trunk (time embedding, conv_in, down blocks, mid block; up blocks never
run), each down stage's last resnet output (before down-sampling) and the mid-block output
average-pooled and concatenated, then ``visual_projection`` (no bias). Visual Feature
Enhancement (VFE): the trunk runs on [cond; uncond("")] and only the pooled MID vector is
guided, v_mid = v_u + gs (v_c - v_u) (paper Eq. for V_enh). Text side: SD/toy: the text encoder's pooled
EOS output through ``text_projection``; SDXL: encoder 2's ``text_embeds`` with no projection.
Score S = exp(logit_scale) · cos(V, T) (paper Eq. for S(p, x_t, t)). ``text_projection`` starts from OpenAI CLIP
ViT-L/14's ``text_projection.weight`` as the official trainer's (``init_text_projection`` with
``clip_l14_text_projection``) when that checkpoint is found and matches the text width, else at identity; the
source is recorded as ``text_projection_init`` in ``lrm_config.json``.

Saved layout (``save``/``load``, strict)::

    <dir>/lrm_config.json           {"backbone", "visual_dim", "text_dim", "guidance_scale", ...}
    <dir>/unet/                      diffusers UNet2DConditionModel (save_pretrained)
    <dir>/text_encoder/ [text_encoder_2/]  transformers CLIPTextModel(WithProjection)
    <dir>/tokenizer/ [tokenizer_2/]        their CLIPTokenizers
    <dir>/heads.safetensors          visual_projection.weight, [text_projection.weight], logit_scale
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lpo_bench.errors import HarnessError
from lpo_bench.models.bundle import ModelBundle, PromptEmbeds, _tokenize

LOGIT_SCALE_INIT = 2.6592


@dataclass
class LRMText:
    """Cached text side for a list of prompts: UNet conditioning and the normalised text feature."""

    embeds: PromptEmbeds  # cross-attention states (+ SDXL added conditioning) from the LRM's encoders
    feature: torch.Tensor  # [b, d] L2-normalised text feature T̂


def unet_trunk(
    unet: Any, sample: torch.Tensor, timesteps: torch.Tensor, embeds: PromptEmbeds
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Down + mid blocks of a diffusers UNet2DConditionModel (up blocks never run: about half a UNet call).

    Returns ([last resnet output of each down stage, before down-sampling], mid-block output).
    """
    if timesteps.ndim == 0:
        timesteps = timesteps.expand(sample.shape[0])
    added = None
    if embeds.time_ids is not None:
        added = {"text_embeds": embeds.pooled, "time_ids": embeds.time_ids}
    t_emb = unet.get_time_embed(sample=sample, timestep=timesteps)
    emb = unet.time_embedding(t_emb, None)
    aug = unet.get_aug_embed(emb=emb, encoder_hidden_states=embeds.hidden, added_cond_kwargs=added)
    if aug is not None:
        emb = emb + aug
    if unet.time_embed_act is not None:
        emb = unet.time_embed_act(emb)
    hidden = unet.process_encoder_hidden_states(encoder_hidden_states=embeds.hidden, added_cond_kwargs=added)
    x = unet.conv_in(sample)
    stages = []
    for block in unet.down_blocks:
        if getattr(block, "has_cross_attention", False):
            x, res = block(hidden_states=x, temb=emb, encoder_hidden_states=hidden)
        else:
            x, res = block(hidden_states=x, temb=emb)
        stages.append(res[-2] if block.downsamplers is not None else res[-1])
    if getattr(unet.mid_block, "has_cross_attention", False):
        mid = unet.mid_block(x, emb, encoder_hidden_states=hidden)
    else:
        mid = unet.mid_block(x, emb)
    return stages, mid


class LatentRewardModel(nn.Module):
    """LRM over one backbone's latent space. Build with ``from_bundle``; score with ``score``."""

    id = "lrm"
    version = "1"
    input_mode = "noisy_latent"  # scores x_t itself (step-accuracy labels its rows with this)

    def __init__(
        self,
        unet: Any,
        text_encoders: Sequence[Any],
        tokenizers: Sequence[Any],
        *,
        text_kind: str,
        resolution: int,
        guidance_scale: float = 7.5,
        multi_scale: bool = True,
        force_zeros_for_empty_prompt: bool = False,
    ) -> None:
        super().__init__()
        self.unet = unet
        self.text_encoders = nn.ModuleList(list(text_encoders))
        self.tokenizers = list(tokenizers)
        self.text_kind = text_kind
        self.resolution = resolution
        self.guidance_scale = float(guidance_scale)
        self.multi_scale = multi_scale
        self.force_zeros_for_empty_prompt = force_zeros_for_empty_prompt
        chans = list(unet.config.block_out_channels)
        visual_dim = (sum(chans) + chans[-1]) if multi_scale else chans[-1]
        if text_kind == "sdxl":
            text_dim = int(self.text_encoders[-1].config.projection_dim)
            self.text_projection = None
        else:
            text_dim = int(self.text_encoders[0].config.hidden_size)
            self.text_projection = nn.Linear(text_dim, text_dim, bias=False)
            with torch.no_grad():  # identity keeps T as is; init_text_projection sets CLIP-L's (official)
                self.text_projection.weight.copy_(torch.eye(text_dim))
        self.text_projection_init = "identity" if self.text_projection is not None else "none"
        self.visual_projection = nn.Linear(visual_dim, text_dim, bias=False)
        nn.init.normal_(self.visual_projection.weight, std=0.02)
        self.logit_scale = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT))
        self.visual_dim, self.text_dim = visual_dim, text_dim

    # ------------------------------------------------------------------ construction / io
    def init_text_projection(self, weight: torch.Tensor, source: str) -> None:
        """Start ``text_projection`` from ``weight`` [text_dim, text_dim] (e.g. CLIP ViT-L/14's), recording
        ``source``; refuses another shape or a backbone without a projection (SDXL)."""
        if self.text_projection is None or tuple(weight.shape) != tuple(self.text_projection.weight.shape):
            have = None if self.text_projection is None else tuple(self.text_projection.weight.shape)
            raise ValueError(f"text_projection {have} cannot start from a {tuple(weight.shape)} weight")
        with torch.no_grad():
            self.text_projection.weight.copy_(weight.to(self.text_projection.weight))
        self.text_projection_init = source

    @classmethod
    def from_bundle(cls, bundle: ModelBundle, *, guidance_scale: float = 7.5, multi_scale: bool = True) -> LatentRewardModel:
        """A fresh LRM initialised from the backbone's UNet and text encoder(s) (deep copies)."""
        return cls(
            copy.deepcopy(bundle.unet).float(),
            [copy.deepcopy(e).float() for e in bundle.text_encoders],
            bundle.tokenizers,
            text_kind=bundle.text_kind,
            resolution=bundle.resolution,
            guidance_scale=guidance_scale,
            multi_scale=multi_scale,
            force_zeros_for_empty_prompt=bundle.force_zeros_for_empty_prompt,
        )

    def save(self, out_dir: str | Path) -> Path:
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(out / "unet")
        for i, enc in enumerate(self.text_encoders):
            enc.save_pretrained(out / ("text_encoder" if i == 0 else f"text_encoder_{i + 1}"))
        for i, tok in enumerate(self.tokenizers):  # the LRM's encoders go with their own tokenizers
            tok.save_pretrained(out / ("tokenizer" if i == 0 else f"tokenizer_{i + 1}"))
        heads = {"visual_projection.weight": self.visual_projection.weight.detach().contiguous(),
                 "logit_scale": self.logit_scale.detach().reshape(1).contiguous()}
        if self.text_projection is not None:
            heads["text_projection.weight"] = self.text_projection.weight.detach().contiguous()
        save_file(heads, str(out / "heads.safetensors"))
        cfg = {"text_kind": self.text_kind, "resolution": self.resolution, "guidance_scale": self.guidance_scale,
               "multi_scale": self.multi_scale, "visual_dim": self.visual_dim, "text_dim": self.text_dim,
               "force_zeros_for_empty_prompt": self.force_zeros_for_empty_prompt, "version": self.version,
               "text_projection_init": self.text_projection_init}
        (out / "lrm_config.json").write_text(json.dumps(cfg, indent=2))
        return out

    @classmethod
    def load(cls, path: str | Path, bundle: ModelBundle, device: str | torch.device = "cpu") -> LatentRewardModel:
        """Load a saved LRM strictly (its own tokenizers when saved, else the bundle's: same CLIP vocabulary)."""
        from diffusers import UNet2DConditionModel
        from safetensors.torch import load_file
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        path = Path(path)
        if not (path / "lrm_config.json").exists():
            raise HarnessError(f"{path} is not an LRM directory (no lrm_config.json); pass a directory written by "
                               f"`lpo-bench train-reward --kind lrm` or a finished LPO run's lrm/ folder")
        cfg = json.loads((path / "lrm_config.json").read_text())
        if cfg["text_kind"] != bundle.text_kind:
            raise HarnessError(f"LRM at {path} was built for a {cfg['text_kind']} backbone, not {bundle.name}; "
                               f"train an LRM for this backbone")
        try:
            unet = UNet2DConditionModel.from_pretrained(path / "unet")
            encs = [CLIPTextModel.from_pretrained(path / "text_encoder")]
            if cfg["text_kind"] == "sdxl":
                encs.append(CLIPTextModelWithProjection.from_pretrained(path / "text_encoder_2"))
            toks = list(bundle.tokenizers)
            for i in range(len(toks)):
                d = path / ("tokenizer" if i == 0 else f"tokenizer_{i + 1}")
                if d.is_dir():
                    toks[i] = CLIPTokenizer.from_pretrained(d)
            model = cls(unet, encs, toks, text_kind=cfg["text_kind"], resolution=cfg["resolution"],
                        guidance_scale=cfg["guidance_scale"], multi_scale=cfg["multi_scale"],
                        force_zeros_for_empty_prompt=cfg["force_zeros_for_empty_prompt"])
            heads = load_file(str(path / "heads.safetensors"))
            heads["logit_scale"] = heads["logit_scale"].reshape(())
            missing = {"visual_projection.weight", "logit_scale"} | (
                {"text_projection.weight"} if model.text_projection is not None else set())
            if set(heads) != missing:
                raise ValueError(f"heads keys {sorted(heads)} != expected {sorted(missing)}")
            model.visual_projection.load_state_dict({"weight": heads["visual_projection.weight"]}, strict=True)
            if model.text_projection is not None:
                model.text_projection.load_state_dict({"weight": heads["text_projection.weight"]}, strict=True)
            with torch.no_grad():
                model.logit_scale.copy_(heads["logit_scale"])
            model.text_projection_init = str(cfg.get("text_projection_init", model.text_projection_init))
        except HarnessError:
            raise
        except Exception as exc:
            raise HarnessError(f"could not load the LRM at {path}: {type(exc).__name__}: "
                               f"{str(exc).splitlines()[0][:200]}; retrain it or pass the right directory") from None
        return model.to(device)

    # ------------------------------------------------------------------ text
    def encode_text(self, prompts: Sequence[str]) -> LRMText:
        """UNet conditioning and normalised text feature from the LRM's own (trainable) encoders."""
        prompts = list(prompts)
        dev = self.logit_scale.device
        if self.text_kind == "sdxl":
            hiddens, pooled = [], None
            for tok, enc in zip(self.tokenizers, self.text_encoders):
                out = enc(_tokenize(tok, prompts).to(dev), output_hidden_states=True)
                hiddens.append(out.hidden_states[-2])
                pooled = out.text_embeds if hasattr(out, "text_embeds") else out[0]
            r = float(self.resolution)
            time_ids = torch.tensor([[r, r, 0.0, 0.0, r, r]], device=dev).repeat(len(prompts), 1)
            embeds = PromptEmbeds(torch.cat(hiddens, -1), pooled, time_ids)
            feature = pooled
        else:
            out = self.text_encoders[0](_tokenize(self.tokenizers[0], prompts).to(dev))
            embeds = PromptEmbeds(out.last_hidden_state, out.pooler_output)
            feature = self.text_projection(out.pooler_output)
        return LRMText(embeds, feature / feature.norm(dim=-1, keepdim=True))

    def negative_embeds(self, n: int) -> PromptEmbeds:
        """The VFE unconditional branch: the real "" encoding, not zeros (as the official LRM)."""
        return self.encode_text([""] * n).embeds

    # ------------------------------------------------------------------ visual + score
    def visual_features(self, latents: torch.Tensor, timesteps: torch.Tensor, embeds: PromptEmbeds,
                        uncond: PromptEmbeds | None) -> torch.Tensor:
        """Normalised V̂ [b, d] from noisy latents [b,c,h,w] at ``timesteps`` [b] (or scalar)."""
        t = torch.as_tensor(timesteps, device=latents.device)
        if t.ndim == 0:
            t = t.expand(latents.shape[0])
        use_vfe = self.guidance_scale != 1.0 and uncond is not None
        if use_vfe:
            stages, mid = unet_trunk(self.unet, torch.cat([latents, latents]), torch.cat([t, t]),
                                     PromptEmbeds.cat([embeds, uncond]))
            b = latents.shape[0]
            pooled = [s[:b].mean(dim=(2, 3)) for s in stages]  # down features: conditional half only
            m_c, m_u = mid[:b].mean(dim=(2, 3)), mid[b:].mean(dim=(2, 3))
            mid_vec = m_u + self.guidance_scale * (m_c - m_u)
        else:
            stages, mid = unet_trunk(self.unet, latents, t, embeds)
            pooled = [s.mean(dim=(2, 3)) for s in stages]
            mid_vec = mid.mean(dim=(2, 3))
        feats = torch.cat([*pooled, mid_vec], dim=-1) if self.multi_scale else mid_vec
        v = self.visual_projection(feats.float())
        return v / v.norm(dim=-1, keepdim=True)

    def score(self, latents: torch.Tensor, timesteps: torch.Tensor, text: LRMText,
              uncond: PromptEmbeds | None = None) -> torch.Tensor:
        """S = exp(logit_scale) · cos(V, T): [b]. ``text`` rows align with ``latents``."""
        if uncond is None and self.guidance_scale != 1.0:
            uncond = self.negative_embeds(latents.shape[0])
        v = self.visual_features(latents, timesteps, text.embeds, uncond)
        return self.logit_scale.exp() * (v * text.feature).sum(-1)

    @torch.no_grad()
    def score_noisy(self, latents: torch.Tensor, timesteps: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """StepRewardModel protocol: scores [b] for noisy latents and prompts."""
        return self.score(latents, timesteps, self.encode_text(prompts)).float().cpu()


def clip_l14_text_projection(text_dim: int, weights_dir: str | Path | None = None,
                             allow_download: bool | None = None) -> tuple[torch.Tensor, str] | None:
    """OpenAI CLIP ViT-L/14's ``text_projection.weight`` [768, 768] and its reference, read from the pinned
    snapshot's ``model.safetensors`` (``--weights-dir`` or the HF cache; a download only on opt-in), as the official
    LRM-1.5 initialises its text projection (Kwai-Kolors/LPO@9c2e8b8 lrm/lrm_15/trainer/models/
    sd15_preference_model.py). None when the checkpoint is absent or the width is not ``text_dim``."""
    from safetensors import safe_open

    from lpo_bench.metrics.clipscore import OPENAI_CLIP_L14
    from lpo_bench.models.weights import resolve_snapshot

    try:
        snap = resolve_snapshot(OPENAI_CLIP_L14.repo, OPENAI_CLIP_L14.revision, required=("model.safetensors",),
                                weights_dir=weights_dir, allow_download=allow_download)
    except HarnessError:  # not available: the caller starts from identity and records it
        return None
    try:
        with safe_open(str(snap / "model.safetensors"), framework="pt") as fh:
            weight = fh.get_tensor("text_projection.weight")
    except Exception as exc:  # safetensors raises its own error type for a corrupt file
        raise HarnessError(f"{snap / 'model.safetensors'} ({OPENAI_CLIP_L14.ref}) has no readable text_projection.weight "
                           f"({type(exc).__name__}); replace the file or pass --rm-set text_projection_init=identity") from None
    if tuple(weight.shape) != (text_dim, text_dim):
        return None
    return weight.float(), f"{OPENAI_CLIP_L14.ref}:text_projection.weight"
