"""How much bf16 / fp16 autocast moves a step-DPO logit beta * (log r_w - log r_l) on a backbone's UNet.

A LoRA policy one AdamW step from its reference (LoRA B entries of size ``--lora-step``, about the learning rate)
against the same UNet with adapters off: one guided eta-DDIM transition x_t -> (x_w, x_l) drawn from the reference,
the per-element-mean step log-probabilities of both under policy and reference, and the logit in fp32, then under
autocast with the frozen weights cast (as ``--precision`` runs it). Prints the logit error per timestep against
the fp32 logit. Not a timed benchmark: a numerical probe (random weights; the error is a property of the precision,
the latent size and sigma_t, not of trained weights).

    python benchmarks/precision_logratio.py --backbone sd15 --precisions bf16 --timesteps 501,1   # ~15 min, 2 CPU cores
"""

from __future__ import annotations

import argparse

import torch

from lpo_bench.diffusion import ddim
from lpo_bench.harness.precision import Precision
from lpo_bench.models import lora
from lpo_bench.models.full_size import full_size_bundle


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="sd15", help="sd15 | sdxl | toy | tiny-sd15 | tiny-sdxl")
    ap.add_argument("--beta", type=float, default=500.0, help="beta_lpo 500, beta_spo 10")
    ap.add_argument("--lora-step", type=float, default=6e-5, help="size of the LoRA B entries (~ one AdamW step)")
    ap.add_argument("--timesteps", default="951,501,101,1")
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--precisions", default="fp16,bf16", help="fp16 is slow on CPUs without native fp16 matmuls")
    args = ap.parse_args()
    torch.set_flush_denormal(True)
    if args.backbone.startswith("tiny-"):
        from lpo_bench.models.tiny import tiny_bundle

        b = tiny_bundle(args.backbone.removeprefix("tiny-"))
    else:
        b = full_size_bundle(args.backbone)
    lora.add_lora(b.unet, rank=4)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in b.unet.named_parameters():
            if "lora_B" in n:
                p.copy_(args.lora_step * torch.randn(p.shape, generator=g).sign())
    cond, uncond = b.encode_prompts(["a photo of a red fox in the snow"]), b.encode_negative(1)
    sched = b.ddim_scheduler(args.steps)
    x_t = torch.randn(1, *b.latent_shape, generator=g)
    ts = [int(t) for t in args.timesteps.split(",")]
    draws = {t: (torch.randn(1, *b.latent_shape, generator=g), torch.randn(1, *b.latent_shape, generator=g)) for t in ts}

    def logit(t: int, amp: Precision) -> float:
        std = ddim.ddim_step_std(sched, t, args.steps, 1.0)
        with torch.no_grad(), amp.autocast():
            eps_p = b.guided_eps(x_t, torch.tensor(t), cond, uncond, args.guidance).float()
            with lora.reference_mode(b.unet):
                eps_r = b.guided_eps(x_t, torch.tensor(t), cond, uncond, args.guidance).float()
        mu_p = ddim.ddim_step_mean(sched, x_t, eps_p, t, args.steps, std).float()
        mu_r = ddim.ddim_step_mean(sched, x_t, eps_r, t, args.steps, std).float()
        z_w, z_l = draws[t]
        x_w, x_l = mu_r + std * z_w, mu_r + std * z_l  # the reference's own samples
        lp = [ddim.step_log_prob(x, mu, torch.tensor([std])) for x in (x_w, x_l) for mu in (mu_p, mu_r)]
        return float(args.beta * ((lp[0] - lp[1]) - (lp[2] - lp[3])))

    ref = {t: logit(t, Precision("fp32")) for t in ts}
    print(f"{args.backbone}: latents {tuple(b.latent_shape)}, beta {args.beta:g}, LoRA B entries +-{args.lora_step:g}")
    for name in args.precisions.split(","):
        amp = Precision(name, "cpu")
        b.unet.to(torch.float32)  # undo the previous precision's cast of the frozen weights
        for m in (b.vae, *b.text_encoders):
            m.to(torch.float32)
        b.activation_dtype = None
        amp.cast_frozen_bundle(b)
        for t in ts:
            low = logit(t, amp)
            print(f"  t={t:4d} sigma={ddim.ddim_step_std(sched, t, args.steps, 1.0):.4f}  fp32 logit {ref[t]:+.5f}  "
                  f"{name} {low:+.5f}  error {low - ref[t]:+.5f}", flush=True)


if __name__ == "__main__":
    main()
