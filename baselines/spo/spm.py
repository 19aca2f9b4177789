"""Step-aware Preference Model (SPM) of SPO (arXiv 2406.04314; RockeyCoss/SPO@27a8642
step_aware_preference_model/): a CLIP preference model whose vision tower is conditioned on the
diffusion timestep.

Architecture (official ``time_conditioned_clip.py``): a DiT timestep embedder (sinusoidal features of
the integer DDPM timestep, 256 frequencies, max period 1e4, then Linear-SiLU-Linear to the vision
width H) drives, in every vision transformer block, an adaLN modulation SiLU -> Linear(H, 6H) giving
(shift, scale, gate) for the attention and the MLP branch::

    h += gate_a ⊙ Attn(LN1(h)·(1 + scale_a) + shift_a)
    h += gate_m ⊙ MLP(LN2(h)·(1 + scale_m) + shift_m)

and, after CLIP's post-layernorm of the CLS token, one more (shift, scale) modulation before the
visual projection. The modulation layers start at weight 0, bias 0 except both gates at 1, so at
initialisation the SPM equals its base scorer exactly. Score (PickScore form)::

    s(I, c, t) = exp(logit_scale) · cos(f_V(I, t), f_T(c))

Bases: ``pickscore`` (``yuvalkirstain/PickScore_v1``, CLIP ViT-H/14 at 224 px, resolved offline) for
the real backbones, ``tiny-clip`` (a small random ``CLIPModel`` using the backbone's tokenizer) for
the toy world and tests. Images enter as [0, 1] RGB; they are resized (bicubic, no antialias by default, as
the official ``F.interpolate`` calls; ``antialias=True`` switches it on) so the short side is the SPM's image
size (``int(side * scale + 0.5)``), centre-cropped (torchvision's rounding), clamped to [0, 1] and normalised
with the OpenAI CLIP mean/std.

Input for noisy latents (``score_noisy``): the CFG-guided one-step prediction x̂0 of the attached
backbone's UNet, VAE-decoded, scored at the latent's timestep t.

Saved layout (``save``/``load``, strict)::

    <dir>/spm_config.json     {"id", "version", "base", "base_checkpoint", "image_size", "freq_dim",
                               "guidance_scale", "antialias"}; written last, so its presence marks a complete save
    <dir>/clip_config.json    transformers CLIPConfig of the base (text + vision towers)
    <dir>/model.safetensors   the whole state dict: clip.*, t_embedder.*, adaln.*, final_adaln.*
    <dir>/tokenizer/          the CLIPTokenizer the text tower was trained with
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lpo_bench.diffusion import ddim
from lpo_bench.errors import HarnessError
from lpo_bench.models.bundle import ModelBundle, PromptEmbeds

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
FREQ_DIM = 256


def timestep_embedding(timesteps: torch.Tensor, dim: int = FREQ_DIM, max_period: float = 10000.0) -> torch.Tensor:
    """DiT sinusoidal features: t [b] (raw DDPM timesteps) -> [b, dim] = [cos(t·f_i), sin(t·f_i)],
    f_i = max_period^(-i / (dim/2)), i = 0 .. dim/2 - 1."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    """Sinusoidal features -> Linear -> SiLU -> Linear (weights N(0, 0.02), biases 0, as DiT)."""

    def __init__(self, hidden: int, freq_dim: int = FREQ_DIM) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        for m in (self.mlp[0], self.mlp[2]):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(timesteps, self.freq_dim).to(self.mlp[0].weight.dtype))


def _modulation(hidden: int, n: int, gate_chunks: Sequence[int] = ()) -> nn.Sequential:
    """SiLU -> Linear(hidden, n·hidden), weight 0, bias 0 except chunks ``gate_chunks`` set to 1."""
    lin = nn.Linear(hidden, n * hidden)
    nn.init.zeros_(lin.weight)
    nn.init.zeros_(lin.bias)
    with torch.no_grad():
        for c in gate_chunks:
            lin.bias[c * hidden : (c + 1) * hidden] = 1.0
    return nn.Sequential(nn.SiLU(), lin)


class StepAwarePreferenceModel(nn.Module):
    """SPM around a transformers ``CLIPModel``. Build with ``from_pickscore`` or ``tiny``."""

    id = "spm"
    version = "1"
    input_mode = "x0_pred_decoded"

    def __init__(self, clip: Any, tokenizer: Any, *, base: str, base_checkpoint: str, freq_dim: int = FREQ_DIM,
                 guidance_scale: float = 5.0, antialias: bool = False) -> None:
        super().__init__()
        self.clip = clip
        self.tokenizer = tokenizer
        self.base, self.base_checkpoint = base, base_checkpoint
        self.image_size = int(clip.config.vision_config.image_size)
        self.guidance_scale = float(guidance_scale)
        self.antialias = bool(antialias)
        hidden = int(clip.config.vision_config.hidden_size)
        layers = len(clip.vision_model.encoder.layers)
        self.t_embedder = TimestepEmbedder(hidden, freq_dim)
        # chunk order (DiT): shift_a, scale_a, gate_a, shift_m, scale_m, gate_m
        self.adaln = nn.ModuleList([_modulation(hidden, 6, gate_chunks=(2, 5)) for _ in range(layers)])
        self.final_adaln = _modulation(hidden, 2)  # shift, scale after the post-layernorm
        self.register_buffer("pixel_mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)
        self._bundle: ModelBundle | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def tiny(cls, tokenizer: Any, *, image_size: int = 32, hidden: int = 64, layers: int = 3, patch_size: int = 4,
             seed: int = 0, guidance_scale: float = 5.0, text_encoder: Any = None,
             antialias: bool = False) -> StepAwarePreferenceModel:
        """A small CLIP base (toy world, tests): a random ViT (width ``hidden``, ``layers`` blocks) and a text
        tower that is a copy of ``text_encoder`` (a ``CLIPTextModel``, e.g. the backbone's: the analogue of
        CLIP's pretrained text tower) or, without one, a random one of the same width and depth."""
        from transformers import CLIPConfig, CLIPModel

        if text_encoder is not None:
            text = text_encoder.config.to_dict()
        else:
            text = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden,
                        num_hidden_layers=layers, num_attention_heads=4,
                        max_position_embeddings=tokenizer.model_max_length, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        vision = dict(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, image_size=image_size, patch_size=patch_size)
        # logit scale starts at PickScore's (100, not CLIP's 1/0.07), so score gaps and SPO's fixed threshold
        # on p_w - p_l = tanh(gap / 2) mean the same as with the real SPM
        config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=hidden,
                            logit_scale_init_value=math.log(100.0))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            clip = CLIPModel(config).eval()
            if text_encoder is not None:
                clip.text_model.load_state_dict(text_encoder.state_dict(), strict=True)
                clip.text_model.float()
            what = "backbone-text" if text_encoder is not None else "random-text"
            return cls(clip, tokenizer, base="tiny-clip", base_checkpoint=f"tiny-clip/{what}/seed{seed}",
                       guidance_scale=guidance_scale, antialias=antialias)

    @classmethod
    def from_pickscore(cls, *, weights_dir: str | Path | None = None, guidance_scale: float = 5.0,
                       allow_download: bool | None = None, antialias: bool = False) -> StepAwarePreferenceModel:
        """SPM initialised from PickScore_v1 (official), resolved offline exactly as the PickScore metric
        (``lpo_bench.metrics.pickscore``: pinned revisions, tokenizer from the LAION CLIP-H repo)."""
        import transformers

        from lpo_bench.metrics._common import CLIP_VOCAB_SIZE, check_vocab, load_hf_model
        from lpo_bench.metrics.pickscore import LAION_H14_PROCESSOR, PICKSCORE_MODEL

        model_dir = PICKSCORE_MODEL.resolve(weights_dir, allow_download)
        processor_dir = LAION_H14_PROCESSOR.resolve(weights_dir, allow_download)
        clip = load_hf_model(transformers.CLIPModel, model_dir, PICKSCORE_MODEL.ref)
        tok = transformers.CLIPTokenizer.from_pretrained(processor_dir, local_files_only=True)
        check_vocab(len(tok), CLIP_VOCAB_SIZE, str(processor_dir))
        tok.model_max_length = 77
        return cls(clip, tok, base="pickscore", base_checkpoint=f"{PICKSCORE_MODEL.ref}+{LAION_H14_PROCESSOR.ref}",
                   guidance_scale=guidance_scale, antialias=antialias)

    def attach(self, bundle: ModelBundle) -> StepAwarePreferenceModel:
        """Use ``bundle`` (its UNet with CFG and its VAE) to turn noisy latents into x̂0 images."""
        self._bundle = bundle
        return self

    # ------------------------------------------------------------------ io
    def save(self, out_dir: str | Path) -> Path:
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "spm_config.json").unlink(missing_ok=True)
        (out / "clip_config.json").write_text(json.dumps(self.clip.config.to_dict(), indent=1, default=str))
        state = {k: v.detach().float().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(out / "model.safetensors"))
        self.tokenizer.save_pretrained(str(out / "tokenizer"))
        cfg = {"id": self.id, "version": self.version, "base": self.base, "base_checkpoint": self.base_checkpoint,
               "image_size": self.image_size, "freq_dim": self.t_embedder.freq_dim,
               "guidance_scale": self.guidance_scale, "antialias": self.antialias}
        (out / "spm_config.json").write_text(json.dumps(cfg, indent=2))
        return out

    @staticmethod
    def is_saved(path: str | Path) -> bool:
        return (Path(path) / "spm_config.json").exists()

    @classmethod
    def load(cls, path: str | Path, bundle: ModelBundle | None = None,
             device: str | torch.device = "cpu") -> StepAwarePreferenceModel:
        """Load a saved SPM strictly (every tensor must match); attach ``bundle`` for ``score_noisy``."""
        from safetensors.torch import load_file
        from transformers import CLIPConfig, CLIPModel, CLIPTokenizer
        from transformers.initialization import no_init_weights

        path = Path(path)
        if not cls.is_saved(path):
            raise HarnessError(f"{path} is not an SPM directory (no spm_config.json); pass a directory written by "
                               f"`lpo-bench train-reward --kind spm` or a finished SPO run's spm/ folder")
        try:
            cfg = json.loads((path / "spm_config.json").read_text())
            clip_cfg = CLIPConfig.from_dict(json.loads((path / "clip_config.json").read_text()))
            with no_init_weights():
                clip = CLIPModel(clip_cfg)
            tok = CLIPTokenizer.from_pretrained(str(path / "tokenizer"), local_files_only=True)
            if len(tok) != clip_cfg.text_config.vocab_size:
                raise ValueError(f"tokenizer has {len(tok)} tokens, the text tower {clip_cfg.text_config.vocab_size}")
            # a directory saved before the switch existed was trained with the antialiased resize
            model = cls(clip, tok, base=cfg["base"], base_checkpoint=cfg["base_checkpoint"], freq_dim=cfg["freq_dim"],
                        guidance_scale=cfg["guidance_scale"], antialias=bool(cfg.get("antialias", True)))
            model.load_state_dict(load_file(str(path / "model.safetensors")), strict=True)
        except Exception as exc:
            raise HarnessError(f"could not load the SPM at {path}: {type(exc).__name__}: "
                               f"{str(exc).splitlines()[0][:200]}; retrain it or pass the right directory") from None
        model = model.to(device).eval()
        return model.attach(bundle) if bundle is not None else model

    # ------------------------------------------------------------------ features
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """images [b,3,H,W] in [0,1] -> normalised pixel values [b,3,S,S] (S = image_size).

        As the official ``get_preference_score``: bicubic resize (``align_corners=False``; antialias only with
        ``self.antialias``) of the short side to S, new size ``int(side · S / short + 0.5)``, centre crop with
        torchvision's offsets ``int(round((side - S) / 2))``, clamp to [0, 1], CLIP mean/std."""
        s = self.image_size
        x = images.to(self.pixel_mean.device, torch.float32)
        h, w = x.shape[-2:]
        if min(h, w) != s:
            scale = s / min(h, w)
            x = F.interpolate(x, size=(int(h * scale + 0.5), int(w * scale + 0.5)), mode="bicubic",
                              align_corners=False, antialias=self.antialias)
        h, w = x.shape[-2:]
        top, left = int(round((h - s) / 2.0)), int(round((w - s) / 2.0))
        x = x[..., top : top + s, left : left + s].clamp(0, 1)
        return (x - self.pixel_mean) / self.pixel_std

    def image_features(self, pixel_values: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Time-conditioned, L2-normalised image features [b, d] (pixel_values from ``preprocess``)."""
        vm = self.clip.vision_model
        t = torch.as_tensor(timesteps, device=pixel_values.device)
        if t.ndim == 0:
            t = t.expand(pixel_values.shape[0])
        c = self.t_embedder(t)
        h = vm.pre_layrnorm(vm.embeddings(pixel_values.to(vm.pre_layrnorm.weight.dtype)))
        for layer, mod in zip(vm.encoder.layers, self.adaln, strict=True):
            sa, ca, ga, sm, cm, gm = mod(c).unsqueeze(1).chunk(6, dim=-1)
            a, _ = layer.self_attn(hidden_states=layer.layer_norm1(h) * (1 + ca) + sa, attention_mask=None)
            h = h + ga * a
            h = h + gm * layer.mlp(layer.layer_norm2(h) * (1 + cm) + sm)
        shift, scale = self.final_adaln(c).chunk(2, dim=-1)
        pooled = vm.post_layernorm(h[:, 0]) * (1 + scale) + shift
        f = self.clip.visual_projection(pooled)
        return f / f.norm(dim=-1, keepdim=True)

    def text_features(self, prompts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text features [b, d] of the (unconditioned) text tower."""
        tok = self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
        dev = self.pixel_mean.device
        out = self.clip.get_text_features(input_ids=tok.input_ids.to(dev), attention_mask=tok.attention_mask.to(dev))
        f = out if torch.is_tensor(out) else out.pooler_output
        return f / f.norm(dim=-1, keepdim=True)

    def score_images(self, images: torch.Tensor, timesteps: torch.Tensor | int,
                     text_features: torch.Tensor) -> torch.Tensor:
        """s = exp(logit_scale)·cos(f_V(I, t), f_T(c)): images [b,3,H,W] in [0,1], text_features [b,d] -> [b]."""
        v = self.image_features(self.preprocess(images), torch.as_tensor(timesteps))
        return self.clip.logit_scale.exp() * (v * text_features.to(v)).sum(-1)

    def score(self, images: torch.Tensor, timesteps: torch.Tensor | int, prompts: Sequence[str]) -> torch.Tensor:
        return self.score_images(images, timesteps, self.text_features(prompts))

    @torch.no_grad()
    def score_noisy(self, latents: torch.Tensor, timesteps: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """StepRewardModel protocol: noisy latents [b,c,h,w] at ``timesteps`` [b] -> scores [b] (CPU float32).

        Input mode ``x0_pred_decoded``: CFG-guided x̂0 from the attached bundle's UNet, VAE-decoded.
        """
        if self._bundle is None:
            raise HarnessError("the SPM scores noisy latents through a backbone: call attach(bundle) or "
                               "StepAwarePreferenceModel.load(path, bundle)")
        b = self._bundle
        t = torch.as_tensor(timesteps)
        if t.ndim == 0:
            t = t.expand(latents.shape[0])
        cond, uncond = b.encode_prompts(list(prompts)), b.encode_negative(len(prompts))
        images = predicted_clean_images(b, latents.to(b.device, b.dtype), t.to(b.device), cond, uncond,
                                        self.guidance_scale)
        return self.score(images, t.to(self.pixel_mean.device), prompts).float().cpu()


def x0_from_eps(bundle: ModelBundle, latents: torch.Tensor, eps: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """Per-row x̂0 = (x_t - sqrt(1-ᾱ_t) ε̂) / sqrt(ᾱ_t) via ``ddim.predict_x0`` (rows may differ in t)."""
    out = torch.empty_like(latents)
    t_cpu = timesteps.cpu()
    for t in t_cpu.unique().tolist():
        rows = (t_cpu == t).nonzero().squeeze(1).to(latents.device)
        out[rows] = ddim.predict_x0(bundle.scheduler, latents[rows], eps[rows], int(t))
    return out


@torch.no_grad()
def predicted_clean_images(bundle: ModelBundle, latents: torch.Tensor, timesteps: torch.Tensor, cond: PromptEmbeds,
                           uncond: PromptEmbeds, guidance_scale: float, unet: Any = None) -> torch.Tensor:
    """CFG ε̂ of ``unet`` (default: the bundle's) -> x̂0 -> VAE decode: images [b,3,H,W] in [0,1]."""
    eps = bundle.guided_eps(latents, timesteps, cond, uncond, guidance_scale, unet=unet)
    return bundle.decode(x0_from_eps(bundle, latents, eps, timesteps))
