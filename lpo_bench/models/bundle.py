"""`ModelBundle`: what methods, reward models and evaluation receive for any backbone.

A bundle mirrors the diffusers components of a Stable-Diffusion-family pipeline (UNet, VAE,
text encoder(s), tokenizer(s), noise schedule) and adds the few helpers every method needs:
prompt encoding (with the SDXL added conditioning), one UNet call, VAE encode/decode, and the
DDIM sampling scheduler configured exactly like the SD pipelines (20 "leading" steps with
offset 1 give t = 951, 901, ..., 1).

Two text paths exist:

* ``text_kind="sd"`` (SD1.5, SD2.1, toy): one ``CLIPTextModel``; the UNet's cross-attention
  input is ``last_hidden_state``; the pooled text feature is the encoder's pooled EOS output.
* ``text_kind="sdxl"``: ``CLIPTextModel`` + ``CLIPTextModelWithProjection``; cross-attention
  input is the concatenation of both encoders' penultimate hidden states; the pooled feature is
  encoder 2's projected ``text_embeds``; ``time_ids`` carry the micro-conditioning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class PromptEmbeds:
    """Encoded prompts.

    hidden: [b, L, d] cross-attention states.
    pooled: [b, d_pool] pooled text feature (SD: pooled EOS output; SDXL: encoder-2 text_embeds).
    time_ids: [b, 6] SDXL micro-conditioning, else None.
    """

    hidden: torch.Tensor
    pooled: torch.Tensor
    time_ids: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.hidden.shape[0]

    def index(self, idx: torch.Tensor | slice | Sequence[int]) -> PromptEmbeds:
        """Rows ``idx`` of every field."""
        if not isinstance(idx, (slice, torch.Tensor)):
            idx = torch.as_tensor(list(idx), dtype=torch.long, device=self.hidden.device)
        return PromptEmbeds(
            self.hidden[idx], self.pooled[idx], None if self.time_ids is None else self.time_ids[idx]
        )

    def repeat(self, n: int) -> PromptEmbeds:
        """Tile the batch n times (block-major: [e0..eB, e0..eB, ...])."""
        return PromptEmbeds(
            self.hidden.repeat(n, 1, 1),
            self.pooled.repeat(n, 1),
            None if self.time_ids is None else self.time_ids.repeat(n, 1),
        )

    @staticmethod
    def cat(parts: Sequence[PromptEmbeds]) -> PromptEmbeds:
        t = [p.time_ids for p in parts]
        return PromptEmbeds(
            torch.cat([p.hidden for p in parts]),
            torch.cat([p.pooled for p in parts]),
            None if any(x is None for x in t) else torch.cat(t),  # type: ignore[arg-type]
        )

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> PromptEmbeds:
        f = (lambda x: x.to(device=device, dtype=dtype)) if dtype else (lambda x: x.to(device))
        return PromptEmbeds(f(self.hidden), f(self.pooled), None if self.time_ids is None else f(self.time_ids))


@dataclass
class ModelBundle:
    """Diffusers components of one backbone plus the helpers methods share.

    Attributes:
        name: registry name of the backbone (``toy``, ``sd15``, ``sd21``, ``sdxl``, or ``tiny-*``).
        unet: ``UNet2DConditionModel`` (epsilon prediction).
        vae: ``AutoencoderKL``.
        text_encoders / tokenizers: one (SD, toy) or two (SDXL) of each.
        scheduler: the training noise schedule (``DDPMScheduler``: ``add_noise``, ``alphas_cumprod``).
        text_kind: ``"sd"`` or ``"sdxl"`` (see module docstring).
        resolution: pixel size of generated images.
        provenance: ``{"backbone_id", "backbone_revision", "weights_sha256", ...}`` recorded in runs.
        force_zeros_for_empty_prompt: SDXL's unconditional branch uses zeros, not the "" encoding.
        activation_dtype: dtype of latents and prompt embeddings (``dtype``); None: the UNet's parameter dtype.
            Set when mixed precision casts the frozen weights to bf16/fp16 (``lpo_bench.harness.precision``)
            while autocast computes and the activations stay fp32.
    """

    name: str
    unet: Any
    vae: Any
    text_encoders: tuple[Any, ...]
    tokenizers: tuple[Any, ...]
    scheduler: Any
    text_kind: str = "sd"
    resolution: int = 512
    provenance: dict[str, Any] = field(default_factory=dict)
    force_zeros_for_empty_prompt: bool = False
    activation_dtype: torch.dtype | None = None

    # ------------------------------------------------------------------ geometry
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.activation_dtype or next(self.unet.parameters()).dtype

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        s = self.resolution // self.vae_scale
        return (self.unet.config.in_channels, s, s)

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    def to(self, device: torch.device | str) -> ModelBundle:
        for m in (self.unet, self.vae, *self.text_encoders):
            m.to(device)
        return self

    # ------------------------------------------------------------------ text
    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> PromptEmbeds:
        """Encode prompts for the UNet. Returns hidden [b,L,d], pooled [b,d_pool], time_ids."""
        prompts = list(prompts)
        dev = self.device
        if self.text_kind == "sd":
            tok, enc = self.tokenizers[0], self.text_encoders[0]
            ids = _tokenize(tok, prompts).to(dev)
            out = enc(ids)
            return PromptEmbeds(out.last_hidden_state.to(self.dtype), out.pooler_output.to(self.dtype))
        if self.text_kind == "sdxl":
            hiddens = []
            pooled = None
            for tok, enc in zip(self.tokenizers, self.text_encoders):
                ids = _tokenize(tok, prompts).to(dev)
                out = enc(ids, output_hidden_states=True)
                hiddens.append(out.hidden_states[-2])
                pooled = out.text_embeds if hasattr(out, "text_embeds") else out[0]
            assert pooled is not None
            hidden = torch.cat(hiddens, dim=-1).to(self.dtype)
            r = float(self.resolution)
            time_ids = torch.tensor([[r, r, 0.0, 0.0, r, r]], device=dev, dtype=self.dtype).repeat(len(prompts), 1)
            return PromptEmbeds(hidden, pooled.to(self.dtype), time_ids)
        raise ValueError(f"unknown text_kind {self.text_kind!r}")

    def encode_negative(self, n: int) -> PromptEmbeds:
        """The unconditional branch for CFG: "" encodings, or zeros for SDXL (force_zeros_for_empty_prompt)."""
        e = self.encode_prompts([""] * n)
        if self.force_zeros_for_empty_prompt:
            e = PromptEmbeds(torch.zeros_like(e.hidden), torch.zeros_like(e.pooled), e.time_ids)
        return e

    # ------------------------------------------------------------------ denoiser
    def unet_forward(
        self, latents: torch.Tensor, timesteps: torch.Tensor, embeds: PromptEmbeds, unet: Any = None
    ) -> torch.Tensor:
        """One epsilon prediction. latents [b,c,h,w], timesteps [b] or scalar -> [b,c,h,w]."""
        unet = unet or self.unet
        if not torch.is_tensor(timesteps):
            timesteps = torch.tensor(timesteps, device=latents.device)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(latents.shape[0])
        kwargs: dict[str, Any] = {}
        if embeds.time_ids is not None:
            kwargs["added_cond_kwargs"] = {"text_embeds": embeds.pooled, "time_ids": embeds.time_ids}
        return unet(latents, timesteps, encoder_hidden_states=embeds.hidden, return_dict=False, **kwargs)[0]

    def guided_eps(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        cond: PromptEmbeds,
        uncond: PromptEmbeds,
        guidance_scale: float,
        unet: Any = None,
    ) -> torch.Tensor:
        """Classifier-free guided epsilon: eps_u + gs * (eps_c - eps_u), one batched call of 2b."""
        if guidance_scale == 1.0:
            return self.unet_forward(latents, timesteps, cond, unet)
        if not torch.is_tensor(timesteps):
            timesteps = torch.tensor(timesteps, device=latents.device)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(latents.shape[0])
        both = PromptEmbeds.cat([uncond, cond])
        eps = self.unet_forward(torch.cat([latents, latents]), torch.cat([timesteps, timesteps]), both, unet)
        eps_u, eps_c = eps.chunk(2)
        return eps_u + guidance_scale * (eps_c - eps_u)

    # ------------------------------------------------------------------ VAE
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents [b,c,h,w] -> images [b,3,H,W] in [0,1]."""
        x = self.vae.decode(latents.to(self.vae.dtype) / self.scaling_factor, return_dict=False)[0]
        return (x.float() / 2 + 0.5).clamp(0, 1)

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images [b,3,H,W] in [0,1] -> scaled latents (posterior sample, as in LRM/DPO training)."""
        x = images.to(device=self.device, dtype=self.vae.dtype) * 2 - 1
        dist = self.vae.encode(x).latent_dist
        return dist.sample(generator=generator) * self.scaling_factor

    @torch.no_grad()
    def encode_posterior(
        self, images: torch.Tensor, batch_size: int = 64, store_dtype: torch.dtype = torch.float32
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """VAE posterior (mean, std) of images [n,3,H,W] in [0,1], unscaled, on the CPU, in batches.

        Trainers cache these once and draw ``(mean + std * z) * scaling_factor`` per step, as the official
        code samples ``latent_dist`` each time.
        """
        means, stds = [], []
        for s in range(0, len(images), batch_size):
            x = images[s : s + batch_size].to(self.device, self.vae.dtype) * 2 - 1
            d = self.vae.encode(x).latent_dist
            means.append(d.mean.to("cpu", store_dtype))
            stds.append(d.std.to("cpu", store_dtype))
        return torch.cat(means), torch.cat(stds)

    # ------------------------------------------------------------------ schedulers
    def ddim_scheduler(self, num_inference_steps: int) -> Any:
        """A fresh DDIMScheduler on the training schedule, SD-style ("leading", offset 1), steps set."""
        from diffusers import DDIMScheduler

        cfg = dict(self.scheduler.config)
        ddim = DDIMScheduler(
            num_train_timesteps=cfg.get("num_train_timesteps", 1000),
            beta_start=cfg.get("beta_start", 0.00085),
            beta_end=cfg.get("beta_end", 0.012),
            beta_schedule=cfg.get("beta_schedule", "scaled_linear"),
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
            timestep_spacing="leading",
            prediction_type=cfg.get("prediction_type", "epsilon"),
        )
        ddim.set_timesteps(num_inference_steps)
        return ddim

    def eval(self) -> ModelBundle:
        for m in (self.unet, self.vae, *self.text_encoders):
            m.eval()
        return self


def _tokenize(tokenizer: Any, prompts: list[str]) -> torch.Tensor:
    return tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
