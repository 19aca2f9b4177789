"""Mixed precision and gradient checkpointing of a training run (``--precision``, ``--grad-ckpt``).

``fp32`` changes nothing: no autocast, no loss scaling, no cast; :meth:`Precision.backward` is ``loss.backward()``
and :meth:`Precision.clip_and_step` is ``clip_grad_norm_`` then ``optimizer.step()``, so a run is bit-identical
to one without this module.

``bf16`` / ``fp16``: the harness runs every update (the loop's ``train_step`` calls), the reward models'
validation and evaluation under ``torch.autocast(device_type, dtype)``. Trainable parameters, their gradients
and the optimiser state stay fp32 (master weights: LoRA adapters, a fully fine-tuned UNet, reward-model weights).
After the method's setup the harness casts the bundle's *frozen* parameters (VAE, text encoders, the UNet's base
weights under LoRA) to the low precision (:meth:`Precision.cast_frozen_bundle`); the bundle keeps its activation
dtype (latents, embeddings) at fp32 so sampling trajectories are not rounded between steps. A method casts the
frozen models it owns (a reference UNet copy, a frozen reward model) with :meth:`Precision.cast_frozen`.

``fp16`` also needs loss scaling (``torch.amp.GradScaler``): the method calls ``ctx.precision.backward(loss)``
instead of ``loss.backward()`` and ``ctx.precision.clip_and_step(opt, params, max_norm)`` instead of its
clip + step lines (unscale, clip, step unless a gradient is inf/NaN, update the scale); the loop logs the scale
and whether the update was skipped. Methods and reward trainers declare that they did so with the class attribute
``loss_scaling = True``; ``--precision fp16`` is refused for the others before any model loads.

A method whose loss is beta x (policy pass - reference pass) of the same UNet (a DPO-style log-ratio) declares
``fp32_log_ratio = True`` and runs those two passes under :meth:`Precision.exact`: autocast off, with the UNet kept
fp32 (:meth:`cast_frozen_bundle` with ``keep_unet``). Measured on tiny bundles one update from the reference, bf16
autocast moved LPO's loss from 0.645 to 10.5 and Diffusion-DPO's from 0.693 to 0.613, and on the full-size SD1.5
UNet it moved LPO's pair logit by 4x-37x the signal (``benchmarks/precision_logratio.py``): early in training the
policy's difference from its reference is below bf16's resolution, so rounding would decide the gradient's sign.
Low precision then covers the rest of such a method's work (sampling, reward scoring, frozen encoders).

Gradient checkpointing (``--grad-ckpt``): diffusers' ``enable_gradient_checkpointing()`` on the bundle's UNet
before the reward stage and the method's setup; the UNet recomputes each ResNet and transformer block's
activations in the backward pass (one extra forward) instead of storing them. A reward model copied from the
bundle's UNet inherits the setting.
"""

from __future__ import annotations

import contextlib
from typing import Any

from lpo_bench.errors import HarnessError

PRECISIONS = ("fp32", "bf16", "fp16")
_TORCH_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


def check_precision(precision: str, device: str, *, loss_scaling: dict[str, bool] | None = None) -> None:
    """Refuse, before any model loads, a precision that is unknown, that this torch cannot autocast on
    ``device``, or (fp16) that a trainer of the run cannot loss-scale. ``loss_scaling``: trainer label ->
    whether it declares ``loss_scaling = True``."""
    if precision not in PRECISIONS:
        raise HarnessError(f"--precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return
    import torch

    device_type = str(device).split(":")[0]
    dtype = getattr(torch, _TORCH_DTYPES[precision])
    try:
        if device_type != "cuda":  # CUDA autocasts both; probing it here would open a context on GPU 0 per rank
            with torch.autocast(device_type=device_type, dtype=dtype):
                torch.nn.functional.linear(torch.ones(1, 2, device=device), torch.ones(2, 2, device=device))
        if precision == "fp16":
            torch.amp.GradScaler(device_type)
    except (RuntimeError, ValueError, AssertionError) as exc:
        raise HarnessError(f"--precision {precision} does not run on {device} with torch {torch.__version__} "
                           f"({str(exc).splitlines()[0][:80]}); use --precision bf16 or fp32") from None
    if precision == "fp16":
        lacking = sorted(name for name, ok in (loss_scaling or {}).items() if not ok)
        if lacking:
            raise HarnessError(f"--precision fp16 needs loss scaling, which {', '.join(lacking)} does not do "
                               f"(it steps its optimiser itself); use --precision bf16 or fp32")


class Precision:
    """The precision of one run's updates: autocast, backward, clip + step, and casts of frozen weights.

    ``name``: "fp32" | "bf16" | "fp16"; ``device``: where the run computes ("cpu", "cuda", "cuda:1").
    State (``state_dict``): the GradScaler's scale and growth tracker, and the count of skipped updates.
    """

    def __init__(self, name: str = "fp32", device: str = "cpu") -> None:
        if name not in PRECISIONS:
            raise HarnessError(f"--precision {name!r} is not one of {', '.join(PRECISIONS)}")
        import torch

        self.name = name
        self.device_type = str(device).split(":")[0]
        self.dtype = getattr(torch, _TORCH_DTYPES[name]) if name in _TORCH_DTYPES else None
        self.scaler = torch.amp.GradScaler(self.device_type) if name == "fp16" else None
        self.skipped_updates = 0  # fp16 updates skipped on an inf/NaN gradient
        self.last_skipped = False

    @property
    def low(self) -> bool:
        """Whether this is a reduced precision (bf16 or fp16)."""
        return self.dtype is not None

    def autocast(self) -> contextlib.AbstractContextManager:
        """``torch.autocast`` in the low precision; a null context for fp32."""
        if self.dtype is None:
            return contextlib.nullcontext()
        import torch

        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def exact(self) -> contextlib.AbstractContextManager:
        """Autocast off (fp32 compute) inside a low-precision region, for the passes whose difference is the loss;
        a null context for fp32."""
        if self.dtype is None:
            return contextlib.nullcontext()
        import torch

        return torch.autocast(device_type=self.device_type, enabled=False)

    def backward(self, loss: Any) -> None:
        """``loss.backward()``; under fp16 the loss is multiplied by the current loss scale first."""
        if self.scaler is None:
            loss.backward()
        else:
            self.scaler.scale(loss).backward()

    def clip_and_step(self, optimizer: Any, params: list[Any], max_norm: float) -> float:
        """Clip the gradients of ``params`` to total L2 norm ``max_norm`` (``inf`` or <= 0: measure only) and step
        ``optimizer``; returns the gradient norm before clipping (of the unscaled gradients).

        fp16: unscale the gradients, clip, step unless the norm is inf/NaN (then the update is skipped and counted,
        as ``GradScaler.step`` does), update the scale. A call where no parameter has a gradient steps nothing.
        """
        import torch

        self.last_skipped = False
        limit = float(max_norm) if max_norm and max_norm > 0 else float("inf")
        if self.scaler is None:
            gnorm = torch.nn.utils.clip_grad_norm_(params, limit)
            optimizer.step()
            return float(gnorm)
        if not any(p.grad is not None for p in params):
            return 0.0
        if self.scaler._scale is None:  # a rank that held no pair this session never scaled a loss: set the scale up
            self.scaler.scale(torch.zeros((), device=next(p for p in params if p.grad is not None).device))
        self.scaler.unscale_(optimizer)
        gnorm = torch.nn.utils.clip_grad_norm_(params, limit)
        scale = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        if self.scaler.get_scale() < scale:  # the scale backs off exactly when an inf/NaN gradient skipped the step
            self.last_skipped = True
            self.skipped_updates += 1
        return float(gnorm)

    def step_logs(self) -> dict[str, float]:
        """What the loop appends to an update's logs: the loss scale and whether the update was skipped (fp16)."""
        if self.scaler is None:
            return {}
        return {"loss_scale": float(self.scaler.get_scale()), "skipped_update": float(self.last_skipped),
                "skipped_updates": float(self.skipped_updates)}

    # ------------------------------------------------------------------ frozen weights
    def cast_frozen(self, module: Any) -> Any:
        """Cast ``module``'s floating-point parameters that do not require gradients to the low precision, in
        place; trainable parameters (and buffers) keep their dtype. fp32: a no-op. Returns ``module``."""
        if self.dtype is None or module is None:
            return module
        for p in module.parameters():
            if not p.requires_grad and p.is_floating_point() and p.dim() > 0:  # scalars (logit_scale) keep fp32
                p.data = p.data.to(self.dtype)
        return module

    def cast_frozen_bundle(self, bundle: Any, *, keep_unet: bool = False) -> None:
        """Cast the frozen parameters of the bundle's UNet (unless ``keep_unet``: a method with
        ``fp32_log_ratio``), VAE and text encoders (:meth:`cast_frozen`); the bundle's activation dtype
        (``bundle.dtype``: latents, prompt embeddings) stays what it was."""
        if self.dtype is None:
            return
        bundle.activation_dtype = bundle.dtype
        for m in ((() if keep_unet else (bundle.unet,)) + (bundle.vae, *bundle.text_encoders)):
            self.cast_frozen(m)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Plain values only (checkpoints load with ``weights_only=True``); empty for fp32 and bf16."""
        if self.scaler is None:
            return {}
        return {"scaler": dict(self.scaler.state_dict()), "skipped_updates": self.skipped_updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state["scaler"])
            self.skipped_updates = int(state["skipped_updates"])


def enable_gradient_checkpointing(bundle: Any) -> None:
    """diffusers gradient checkpointing on the bundle's UNet (recompute each block's activations in the
    backward pass); refused with one line for a UNet that does not support it."""
    unet = bundle.unet
    if not getattr(unet, "_supports_gradient_checkpointing", False):
        raise HarnessError(f"the {bundle.name} UNet ({type(unet).__name__}) does not support gradient "
                           f"checkpointing; drop --grad-ckpt")
    unet.enable_gradient_checkpointing()
