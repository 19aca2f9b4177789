"""The toy backbone: a tiny Stable-Diffusion-shaped model of the toy world (32x32 RGB shapes).

Every component is a real diffusers/transformers class, so timestep grids, DDIM sampling and
the step-level thresholds of the methods mean exactly what they mean for SD1.5:

* tokenizer: a word-level ``CLIPTokenizer`` (each toy-world word is one BPE token), shipped in
  ``assets/tokenizer/`` and built by :func:`write_toy_tokenizer`;
* text encoder: ``CLIPTextModel`` (hidden 64, 3 layers); the pooled output is the EOS position;
* VAE: ``AutoencoderKL``, 32x32x3 -> 4x8x8 latents (3 levels, 4x down-sampling);
* denoiser: ``UNet2DConditionModel`` with cross-attention (~2M parameters);
* schedule: SD's ``DDPMScheduler`` (scaled-linear betas 0.00085 -> 0.012, 1000 steps, epsilon).

Pretrained weights ship in ``assets/base/`` (written by :mod:`lpo_bench.toy.pretrain`).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from lpo_bench.errors import HarnessError

TOY_MODEL_VERSION = "toy-v2"  # v2: the EMA recipe of toy.pretrain (1000 VAE, 6000 UNet updates, 15% defects)
TOY_BACKBONE_ID = "lpo-bench/toy"
ASSETS_DIR = Path(__file__).resolve().parent / "assets"
TOKENIZER_DIR = ASSETS_DIR / "tokenizer"
BASE_WEIGHTS_DIR = ASSETS_DIR / "base"
TOKENIZER_MAX_LENGTH = 20  # BOS + longest toy prompt (< 18 words) + EOS

# Weights layout (diffusers/transformers ``save_pretrained``), relative to a weights directory.
WEIGHT_FILES: dict[str, str] = {
    "unet": "unet/diffusion_pytorch_model.safetensors",
    "vae": "vae/diffusion_pytorch_model.safetensors",
    "text_encoder": "text_encoder/model.safetensors",
}

TEXT_HIDDEN = 64

UNET_CONFIG: dict[str, Any] = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64, 96),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=1,
    cross_attention_dim=TEXT_HIDDEN,
    attention_head_dim=8,
    norm_num_groups=8,
)

VAE_CONFIG: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(16, 32, 64),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    sample_size=32,
    scaling_factor=1.0,  # replaced by the measured 1/std of the latents after VAE pretraining
)

SCHEDULER_CONFIG: dict[str, Any] = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    steps_offset=1,
    prediction_type="epsilon",
)

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_EXTRA_SYMBOLS = "abcdefghijklmnopqrstuvwxyz0123456789,."


# --------------------------------------------------------------------------- tokenizer
def _bpe_merges(words: Iterable[str]) -> list[tuple[str, str]]:
    """Greedy BPE over the word list until every word is one symbol (ties broken lexically).

    Applying the merges in rank order (what CLIP's BPE does) replays this trajectory, so each
    word ends as the single token ``word</w>``.
    """
    seqs = [[*w[:-1], w[-1] + "</w>"] for w in sorted(set(words)) if len(w) > 1]
    merges: list[tuple[str, str]] = []
    while True:
        counts: Counter[tuple[str, str]] = Counter()
        for s in seqs:
            counts.update(zip(s[:-1], s[1:], strict=True))
        if not counts:
            return merges
        top = max(counts.values())
        pair = min(p for p, c in counts.items() if c == top)
        merges.append(pair)
        for i, s in enumerate(seqs):
            out, j = [], 0
            while j < len(s):
                if j + 1 < len(s) and (s[j], s[j + 1]) == pair:
                    out.append(s[j] + s[j + 1])
                    j += 2
                else:
                    out.append(s[j])
                    j += 1
            seqs[i] = out
        seqs = [s for s in seqs if len(s) > 1]


def write_toy_tokenizer(out_dir: str | Path, words: Iterable[str], max_length: int = TOKENIZER_MAX_LENGTH) -> Path:
    """Write a word-level CLIP BPE tokenizer (vocab.json, merges.txt, configs) for ``words``.

    Words must be lowercase letters only (CLIP pre-tokenisation splits digits and punctuation).
    Single letters, digits, "," and "." are in the vocabulary too, so an unknown word still
    tokenises (into pieces) instead of collapsing to the unknown token.
    """
    words = sorted({w.lower() for w in words if w})
    bad = [w for w in words if not w.isalpha()]
    if bad:
        raise ValueError(f"toy vocabulary words must be letters only: {bad[:5]}")
    merges = _bpe_merges(words)
    tokens = [c for c in _EXTRA_SYMBOLS] + [c + "</w>" for c in _EXTRA_SYMBOLS]
    tokens += [a + b for a, b in merges]
    tokens += [w + "</w>" for w in words if len(w) == 1]
    vocab: dict[str, int] = {}
    for t in tokens:
        vocab.setdefault(t, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab, indent=0, sort_keys=False) + "\n")
    (out / "merges.txt").write_text("#version: toy\n" + "".join(f"{a} {b}\n" for a, b in merges))
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": max_length,
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
                "do_lower_case": True,
            },
            indent=1,
        )
        + "\n"
    )
    (out / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
            },
            indent=1,
        )
        + "\n"
    )
    return out


def load_toy_tokenizer(path: str | Path = TOKENIZER_DIR) -> Any:
    """The shipped toy ``CLIPTokenizer`` (local files only)."""
    from transformers import CLIPTokenizer

    if not (Path(path) / "vocab.json").exists():
        raise HarnessError(
            f"toy tokenizer not found at {path}; reinstall lpo-bench or rebuild it with "
            "lpo_bench.toy.models.write_toy_tokenizer(path, lpo_bench.toy.world.VOCAB)"
        )
    return CLIPTokenizer.from_pretrained(str(path), local_files_only=True)


# --------------------------------------------------------------------------- components
def toy_scheduler() -> Any:
    """SD's training noise schedule (scaled-linear, 1000 steps, epsilon prediction)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(**SCHEDULER_CONFIG)


def _text_encoder_config(tokenizer: Any) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_HIDDEN,
        intermediate_size=4 * TEXT_HIDDEN,
        projection_dim=TEXT_HIDDEN,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,  # != 2, so the pooled output is the first EOS position
        pad_token_id=tokenizer.pad_token_id,
    )


def build_toy_components(seed: int) -> tuple[Any, Any, Any, Any, Any]:
    """Randomly initialised (unet, vae, text_encoder, tokenizer, scheduler), seeded by ``seed``."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    tokenizer = load_toy_tokenizer()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_text_encoder_config(tokenizer))
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**VAE_CONFIG)
    torch.manual_seed(seed + 2)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    return unet, vae, text_encoder, tokenizer, toy_scheduler()


def num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------- loading
def _weights_root(weights_dir: str | Path | None) -> Path:
    """Directory holding the toy weights: a toy layout under ``weights_dir`` if any, else the shipped one.

    ``--weights-dir`` is shared by every model of a run, so a directory without toy weights
    (no ``unet/config.json`` at DIR, DIR/toy or DIR/lpo-bench/toy) means "use the shipped ones".
    """
    if weights_dir is not None:
        base = Path(weights_dir)
        for cand in (base, base / "toy", base / "lpo-bench" / "toy", base / "lpo-bench--toy"):
            if (cand / "unet" / "config.json").exists():
                return cand
    return BASE_WEIGHTS_DIR


def _load_state(module: torch.nn.Module, path: Path, what: str) -> None:
    from safetensors.torch import load_file

    fix = "re-run `python -m lpo_bench.toy.pretrain OUT_DIR` or reinstall lpo-bench to restore the shipped weights"
    if not path.exists():
        raise HarnessError(f"toy {what} weights missing: {path}; {fix}")
    try:
        state = load_file(str(path))
    except Exception as exc:
        raise HarnessError(f"toy {what} weights unreadable ({type(exc).__name__}) at {path}; {fix}") from None
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise HarnessError(
            f"toy {what} weights at {path} do not match the toy architecture ({first[:160]}); {fix}"
        ) from None


def _read_config(path: Path, what: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise HarnessError(
            f"toy {what} config missing or invalid at {path} ({type(exc).__name__}); "
            "point --weights-dir at a directory written by lpo_bench.toy.pretrain"
        ) from None


def weights_sha256(root: str | Path) -> dict[str, str]:
    """sha256 of each toy weights file under ``root`` (keys as in WEIGHT_FILES)."""
    from lpo_bench.models.weights import file_sha256

    return {k: file_sha256(Path(root) / rel) for k, rel in WEIGHT_FILES.items()}


def combined_sha256(shas: dict[str, str]) -> str:
    """One digest for a set of weights files: sha256 of the sorted "name:sha256" lines."""
    return hashlib.sha256("".join(f"{k}:{shas[k]}\n" for k in sorted(shas)).encode()).hexdigest()


def load_toy_components(root: str | Path) -> tuple[Any, Any, Any]:
    """(unet, vae, text_encoder) from a pretrain output directory, loaded strictly (fp32, CPU)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    root = Path(root)
    tokenizer = load_toy_tokenizer()
    try:
        unet = UNet2DConditionModel.from_config(_read_config(root / "unet" / "config.json", "unet"))
        vae = AutoencoderKL.from_config(_read_config(root / "vae" / "config.json", "vae"))
        te_cfg = CLIPTextConfig.from_dict(_read_config(root / "text_encoder" / "config.json", "text encoder"))
        text_encoder = CLIPTextModel(te_cfg)
    except HarnessError:
        raise
    except Exception as exc:
        raise HarnessError(
            f"toy model config under {root} is not a valid toy architecture ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:120]}); point --weights-dir at a directory written by lpo_bench.toy.pretrain"
        ) from None
    if te_cfg.vocab_size != len(tokenizer) or te_cfg.eos_token_id != tokenizer.eos_token_id:
        raise HarnessError(
            f"toy text encoder at {root} was trained with a different tokenizer "
            f"(vocab {te_cfg.vocab_size} vs {len(tokenizer)}); re-run lpo_bench.toy.pretrain"
        )
    _load_state(unet, root / WEIGHT_FILES["unet"], "unet")
    _load_state(vae, root / WEIGHT_FILES["vae"], "vae")
    _load_state(text_encoder, root / WEIGHT_FILES["text_encoder"], "text encoder")
    return unet, vae, text_encoder


def load_toy_bundle(
    *, weights_dir: str | Path | None = None, device: str = "cpu", dtype: str = "fp32", **ignored: Any
) -> Any:
    """The toy backbone as a :class:`~lpo_bench.models.bundle.ModelBundle` (registered as ``toy``).

    Loads ``assets/base/`` (or a toy layout under ``weights_dir``) strictly; any missing, corrupt
    or wrong-shape file raises HarnessError. Provenance records the model version and sha256s.
    """
    from lpo_bench.models.bundle import ModelBundle

    if dtype not in _DTYPES:
        raise HarnessError(f"unknown dtype {dtype!r} for the toy backbone; use one of {', '.join(_DTYPES)}")
    root = _weights_root(weights_dir)
    unet, vae, text_encoder = load_toy_components(root)
    tokenizer = load_toy_tokenizer()
    shas = weights_sha256(root)
    for m in (unet, vae, text_encoder):
        m.to(device) if dtype == "fp32" else m.to(device=device, dtype=_DTYPES[dtype])
        m.requires_grad_(False)
    bundle = ModelBundle(
        name="toy",
        unet=unet,
        vae=vae,
        text_encoders=(text_encoder,),
        tokenizers=(tokenizer,),
        scheduler=toy_scheduler(),
        text_kind="sd",
        resolution=32,
        provenance={
            "backbone_id": TOY_BACKBONE_ID,
            "backbone_revision": TOY_MODEL_VERSION,
            "weights_sha256": combined_sha256(shas),
            "weights_files_sha256": shas,
            "weights_path": str(root),
            "dtype": dtype,
        },
    )
    return bundle.eval()
