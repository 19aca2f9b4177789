"""Method configs: frozen dataclasses, TOML presets per backbone, --config FILE and --set key=value.

Resolution order (later wins): dataclass defaults -> ``<method package>/configs/<backbone>.toml``
(if present) -> ``--config FILE`` (TOML) -> ``--set key=value`` (repeatable). Unknown keys are an
error with a did-you-mean. The resolved config is stored with the run as canonical JSON and its
sha256 is the config hash.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import sys
import typing
from pathlib import Path
from typing import Any

from lpo_bench.errors import HarnessError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def field_help(cls: type) -> dict[str, str]:
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def preset_path(method_module: str, backbone: str, prefix: str = "") -> Path | None:
    """``<dir of method_module>/configs/<prefix><backbone>.toml`` if it exists (found without importing).

    Methods use no prefix; reward-model trainers use ``"<kind>_"`` (e.g. ``lrm_toy.toml``).
    """
    spec = importlib.util.find_spec(method_module)
    if spec is None or spec.origin is None:
        return None
    p = Path(spec.origin).parent / "configs" / f"{prefix}{backbone}.toml"
    return p if p.exists() else None


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise HarnessError(f"config file {path} does not exist; pass an existing TOML file to --config")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise HarnessError(f"config file {path} is not valid TOML ({exc}); fix the file") from None


def parse_set(items: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise HarnessError(f"--set {item!r} is malformed; use --set key=value, e.g. --set lr=1e-4")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _coerce(cls: type, name: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    try:
        if origin is typing.Literal:
            if value not in args:
                raise ValueError(f"must be one of {list(args)}")
            return value
        if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
            if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
                if type(None) in args:
                    return None
            inner = [a for a in args if a is not type(None)]
            return _coerce(cls, name, value, inner[0])
        if origin in (tuple, list):
            if isinstance(value, str):
                value = json.loads(value) if value.strip().startswith("[") else value.split(",")
            elem = args[0] if args else str
            return tuple(_coerce(cls, name, v, elem) for v in value)
        if tp is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError("must be true or false")
        if tp is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError("must be an integer")
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if tp is float:
            return float(value)
        if tp is str:
            return str(value)
    except (ValueError, TypeError) as exc:
        raise HarnessError(f"config key {name}={value!r} is invalid for {cls.__name__}: {exc}") from None
    return value


def build_config(cls: type, *layers: dict[str, Any]) -> Any:
    """Instantiate ``cls`` from defaults overridden by each layer in order."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values: dict[str, Any] = {}
    for layer in layers:
        for k, v in layer.items():
            if k not in names:
                close = difflib.get_close_matches(k, names, n=1, cutoff=0.5)
                hint = f" Did you mean '{close[0]}'?" if close else ""
                raise HarnessError(f"unknown config key '{k}' for {cls.__name__}.{hint} Known keys: {', '.join(names)}")
            values[k] = _coerce(cls, k, v, hints[k])
    try:
        return cls(**values)
    except (ValueError, TypeError) as exc:
        raise HarnessError(f"invalid {cls.__name__}: {exc}") from None


def load_config(
    cls: type,
    *,
    method_module: str | None = None,
    backbone: str | None = None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    preset_prefix: str = "",
) -> Any:
    layers: list[dict[str, Any]] = []
    if method_module and backbone:
        p = preset_path(method_module, backbone, preset_prefix)
        if p is not None:
            layers.append(read_toml(p))
    if config_file:
        layers.append(read_toml(config_file))
    if overrides:
        layers.append(overrides)
    return build_config(cls, *layers)


def config_dict(cfg: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
