"""Config values are validated: every field declares its valid values, and ``build_config`` refuses a value
outside them (or a broken rule between fields) with one line naming the class, the field, the value and the
valid range, before any model loads."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from lpo_bench import registry
from lpo_bench.cli import main
from lpo_bench.config import Range, build_config, load_config, preset_path
from lpo_bench.errors import HarnessError

ROOT = Path(__file__).resolve().parents[1]
THROWAWAY = {"winner-sft": "throwaway_method:SPEC"}  # tests/throwaway_method: a method registered by tests only
CONFIG_NAMES = [*registry.METHODS, *registry.STEP_REWARD_MODELS, *THROWAWAY]


def config_class(name: str) -> type:
    """The config class of a registered method or step reward model (or of the tests' throwaway method)."""
    if name in registry.STEP_REWARD_MODELS:
        return registry.load_target(registry.reward_model_spec(name).config)
    with registry.extended("method", THROWAWAY if name in THROWAWAY else {}):
        return registry.load_target(registry.method_spec(name).config)


def refused(name: str, overrides: dict) -> str:
    cls = config_class(name)
    with pytest.raises(HarnessError) as ei:
        build_config(cls, overrides)
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith("invalid config: ") and f" for {cls.__name__}; valid: " in msg, msg
    return msg


# (method or reward model, key, bad value as a --set string or a TOML value, expected fragment of the message)
BAD_VALUES = [
    ("lpo", "num_inference_steps", "0", "num_inference_steps=0 for LPOConfig; valid: in [1, 1000] (DDIM steps"),
    ("lpo", "num_inference_steps", "2000", "valid: in [1, 1000]"),
    ("lpo", "beta_lpo", "-5", "beta_lpo=-5.0 for LPOConfig; valid: > 0"),
    ("lpo", "ratio_clip", "2", "ratio_clip=2.0 for LPOConfig; valid: in (0, 1)"),
    ("lpo", "ratio_clip", "0", "valid: in (0, 1)"),
    ("lpo", "num_candidates", "1", "num_candidates=1 for LPOConfig; valid: >= 2"),
    ("lpo", "eta", "0", "eta=0.0 for LPOConfig; valid: in (0, 1]"),
    ("lpo", "eta", "1.5", "valid: in (0, 1]"),
    ("lpo", "guidance_scale", "0.5", "guidance_scale=0.5 for LPOConfig; valid: >= 1"),
    ("lpo", "threshold_min", "-0.1", "threshold_min=-0.1 for LPOConfig; valid: in [0, 1)"),
    ("lpo", "threshold_max", "1", "threshold_max=1.0 for LPOConfig; valid: in [0, 1)"),
    ("lpo", "min_train_timestep", "1000", "min_train_timestep=1000 for LPOConfig; valid: in [0, 1000)"),
    ("lpo", "max_train_timestep", "-1", "valid: in [0, 1000]"),
    ("lpo", "lr", "0", "lr=0.0 for LPOConfig; valid: > 0"),
    ("lpo", "lr", "nan", "lr=nan for LPOConfig; valid: > 0"),
    ("lpo", "weight_decay", "-1e-4", "valid: >= 0"),
    ("lpo", "grad_clip_norm", "-1", "grad_clip_norm=-1.0 for LPOConfig; valid: >= 0"),
    ("lpo", "train_batch_pairs", "0", "valid: >= 1"),
    ("lpo", "micro_batch_pairs", "0", "micro_batch_pairs=0 for LPOConfig; valid: >= 1"),
    ("lpo", "lora_rank", "0", "lora_rank=0 for LPOConfig; valid: >= 1"),
    ("lpo", "epochs", "0", "epochs=0 for LPOConfig; valid: >= 1"),
    ("lpo", "max_updates", "0", "max_updates=0 for LPOConfig; valid: >= 1"),
    ("lpo", "num_train_prompts", "0", "valid: >= 1"),
    ("lpo", "prompts_per_round", "0", "valid: >= 1"),
    ("spo", "beta_spo", "0", "beta_spo=0.0 for SPOConfig; valid: > 0"),
    ("spo", "threshold_spo", "-0.3", "threshold_spo=-0.3 for SPOConfig; valid: in [0, 1)"),
    ("spo", "num_candidates", "1", "num_candidates=1 for SPOConfig; valid: >= 2"),
    ("spo", "score_batch", "0", "valid: >= 1"),
    ("spo", "lora_alpha", "0", "lora_alpha=0.0 for SPOConfig; valid: > 0"),
    ("spo", "max_train_timestep", "1001", "valid: in [0, 1000]"),
    ("diffusion-dpo", "beta_dpo", "-1", "beta_dpo=-1.0 for DiffusionDPOConfig; valid: > 0"),
    ("diffusion-dpo", "caption_dropout", "1.5", "caption_dropout=1.5 for DiffusionDPOConfig; valid: in [0, 1]"),
    ("diffusion-dpo", "lr_warmup_updates", "-1", "valid: >= 0"),
    ("diffusion-dpo", "pairs_per_update", "0", "valid: >= 1"),
    ("diffusion-dpo", "lora_rank", "-1", "lora_rank=-1 for DiffusionDPOConfig; valid: >= 0"),
    ("diffusion-dpo", "adam_beta1", "1", "adam_beta1=1.0 for DiffusionDPOConfig; valid: in [0, 1)"),
    ("diffusion-dpo", "adam_eps", "-1e-8", "valid: >= 0"),
    ("diffusion-dpo", "max_pairs", "0", "valid: >= 1"),
    ("lrm", "mpcf_strategy", "4", "mpcf_strategy=4 for LRMConfig; valid: in [0, 3]"),
    ("lrm", "largest_timestep", "1000", "largest_timestep=1000 for LRMConfig; valid: in [1, 1000)"),
    ("lrm", "timestep_stride", "0", "valid: >= 1"),
    ("lrm", "guidance_scale_vfe", "0", "guidance_scale_vfe=0.0 for LRMConfig; valid: >= 1"),
    ("lrm", "batch_pairs", "0", "valid: >= 1"),
    ("lrm", "max_val_pairs", "0", "valid: >= 1"),
    ("spm", "tiny_hidden", "30", "tiny_hidden=30 for SPMConfig; valid: >= 4, a multiple of 4"),
    ("spm", "val_timesteps", "0,1000", "val_timesteps=(0, 1000) for SPMConfig; valid: in [0, 1000)"),
    ("spm", "guidance_scale", "0", "valid: >= 1"),
    ("spm", "micro_batch_pairs", "0", "valid: >= 1"),
    ("spm", "clean_warmup_updates", "-1", "valid: >= 0"),
    ("winner-sft", "lr", "-1", "lr=-1.0 for WinnerSFTConfig; valid: > 0"),
    ("winner-sft", "pairs_per_update", "0", "valid: >= 1"),
]

# rules between fields: (method or reward model, overrides, expected fragment)
BAD_COMBINATIONS = [
    ("lpo", {"threshold_min": 0.6, "threshold_max": 0.5},
     "threshold_min=0.6 > threshold_max=0.5 for LPOConfig; valid: threshold_min <= threshold_max"),
    ("lpo", {"min_train_timestep": 600, "max_train_timestep": 500}, "valid: min_train_timestep <= max_train_timestep"),
    ("spo", {"min_train_timestep": 800}, "min_train_timestep=800 > max_train_timestep=751 for SPOConfig"),
    ("diffusion-dpo", {"pairs_per_update": 4, "micro_batch_pairs": 8},
     "micro_batch_pairs=8 > pairs_per_update=4 for DiffusionDPOConfig; valid: micro_batch_pairs <= pairs_per_update"),
    ("lrm", {"warmup_updates": 600, "max_updates": 400}, "valid: warmup_updates <= max_updates"),
    ("spm", {"warmup_updates": 10, "max_updates": 100, "lr_decay_updates": 50},
     "valid: max_updates <= lr_decay_updates"),
    ("spm", {"tiny_patch_size": 64, "tiny_image_size": 32}, "valid: tiny_patch_size <= tiny_image_size"),
]

# values at the edge of a range, or that the code handles on purpose (0 disables clipping, threshold 0, ...)
GOOD_EDGES = [
    ("lpo", {"grad_clip_norm": 0, "threshold_min": 0, "threshold_max": 0, "eta": 1, "guidance_scale": 1}),
    ("lpo", {"max_updates": "none", "micro_batch_pairs": "None", "num_train_prompts": "null"}),
    ("lpo", {"threshold_shape": "constant", "threshold_min": 0.6, "threshold_max": 0.5}),  # min unused when constant
    ("lpo", {"min_train_timestep": 999, "max_train_timestep": 1000, "num_inference_steps": 1, "num_candidates": 2}),
    ("spo", {"train_batch_pairs": 4, "micro_batch_pairs": 16, "threshold_spo": 0.0, "lora_alpha": 0.5}),
    ("diffusion-dpo", {"lora_rank": 0, "grad_clip_norm": 0, "caption_dropout": 1, "adam_beta1": 0, "adam_eps": 0}),
    ("diffusion-dpo", {"lr_warmup_updates": 10, "max_updates": 2}),  # warmup then constant: a short run is fine
    ("lrm", {"mpcf_strategy": 0, "warmup_updates": 0, "max_updates": 1, "largest_timestep": 999,
             "guidance_scale_vfe": 1}),
    ("spm", {"val_timesteps": "0,999", "clean_warmup_updates": 0, "micro_batch_pairs": 128, "batch_pairs": 4}),
]


@pytest.mark.parametrize("name,key,bad,fragment", BAD_VALUES, ids=[f"{r[0]}-{r[1]}={r[2]}" for r in BAD_VALUES])
def test_bad_value_is_refused_in_one_line(name, key, bad, fragment):
    assert fragment in refused(name, {key: bad})


@pytest.mark.parametrize("name,overrides,fragment", BAD_COMBINATIONS,
                         ids=[f"{r[0]}-{'-'.join(r[1])}" for r in BAD_COMBINATIONS])
def test_broken_rule_between_fields_is_refused_in_one_line(name, overrides, fragment):
    assert fragment in refused(name, overrides)


@pytest.mark.parametrize("name,overrides", GOOD_EDGES, ids=[f"{r[0]}-{i}" for i, r in enumerate(GOOD_EDGES)])
def test_edge_values_are_accepted(name, overrides):
    build_config(config_class(name), overrides)


def test_the_table_covers_every_config():
    assert len(BAD_VALUES) + len(BAD_COMBINATIONS) >= 25
    assert {r[0] for r in BAD_VALUES} == set(CONFIG_NAMES)


def _choices_type(tp: typing.Any) -> bool:
    """bool, a Literal, or either of them optional: the type itself lists the valid values."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is typing.Union or type(tp).__name__ == "UnionType":
        return len(args) == 1 and _choices_type(args[0])
    return tp is bool or typing.get_origin(tp) is typing.Literal


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_every_field_declares_its_valid_values(name):
    """A new field needs ``"valid": Range(...)`` (``ANY`` if every value is meant) or a Literal/bool type."""
    cls = config_class(name)
    hints = typing.get_type_hints(cls)
    undeclared = [f.name for f in dataclasses.fields(cls)
                  if not isinstance(f.metadata.get("valid"), Range) and not _choices_type(hints[f.name])]
    assert undeclared == [], f"{cls.__name__}: declare a range (metadata 'valid') for {undeclared}"
    assert all(not _choices_type(hints[f.name]) for f in dataclasses.fields(cls) if "valid" in f.metadata)
    for check in getattr(cls, "CHECKS", ()):
        assert {check.left, check.right} <= set(hints), check


def _stages(spec) -> list:
    return [registry.reward_model_spec(spec.reward_stage)] if spec.reward_stage else []


def test_every_preset_builds_for_every_backbone():
    """Every configs/*.toml builds (and so is valid), alone and under the spec's quick overrides; none is orphaned."""
    built = set()
    with registry.extended("method", THROWAWAY):
        for spec in registry.method_specs():
            module = spec.config.split(":")[0]
            cls = registry.load_target(spec.config)
            build_config(cls, spec.bench)  # bench: defaults + its overrides
            for backbone in registry.BACKBONES:
                load_config(cls, method_module=module, backbone=backbone)
                load_config(cls, method_module=module, backbone=backbone, overrides=dict(spec.quick))
                built.add(preset_path(module, backbone))
                for stage in _stages(spec):
                    kw = dict(method_module=module, backbone=backbone, preset_prefix=f"{stage.name}_")
                    stage_cls = registry.load_target(stage.config)
                    load_config(stage_cls, **kw)
                    load_config(stage_cls, **kw, overrides=dict(spec.quick_reward_stage))
                    built.add(preset_path(module, backbone, f"{stage.name}_"))
    presets = {p.resolve() for folder in ("methods", "baselines") for p in (ROOT / folder).glob("*/configs/*.toml")}
    assert len(presets) >= 17  # 8 LPO/LRM, 6 SPO/SPM, 3 Diffusion-DPO today
    assert presets <= {p.resolve() for p in built if p is not None}, "a preset no method or backbone reads"


def test_bad_set_fails_fast_through_the_cli(capsys):
    for argv, fragment in [
        (["train", "--method", "lpo", "--set", "num_inference_steps=0"],
         "invalid config: num_inference_steps=0 for LPOConfig; valid: in [1, 1000] (DDIM steps per trajectory)"),
        (["train", "--method", "diffusion-dpo", "--set", "beta_dpo=-1"], "beta_dpo=-1.0 for DiffusionDPOConfig"),
        (["train-reward", "--kind", "lrm", "--set", "mpcf_strategy=7"], "mpcf_strategy=7 for LRMConfig"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        lines = [x for x in err.splitlines() if x.startswith("error:")]
        assert len(lines) == 1 and fragment in lines[0], err
