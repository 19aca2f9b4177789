"""Method configs: frozen dataclasses, TOML presets per backbone, --config FILE and --set key=value.

Resolution order (later wins): dataclass defaults -> ``<method package>/configs/<backbone>.toml``
(if present) -> ``--config FILE`` (TOML) -> ``--set key=value`` (repeatable). Unknown keys are an
error with a did-you-mean. The resolved config is stored with the run as canonical JSON and its
sha256 is the config hash.

Every field declares its valid values next to its help, in the field metadata: ``"valid": Range(ge=1)`` for
numbers (``ANY`` where every value is meant), a ``Literal[...]`` or ``bool`` type for choices. Rules between
fields are a ``CHECKS: ClassVar[tuple[Check, ...]]`` on the class. :func:`build_config` enforces both, so a bad
value fails before any model loads, with one line naming the field, the value and the valid range.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import operator
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lpo_bench.errors import HarnessError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class Range:
    """Valid values of a numeric field: ``field(default=4, metadata={"help": "...", "valid": Range(ge=2)})``.

    ``gt``/``ge``/``lt``/``le`` are the bounds (left out: open); ``multiple_of`` asks for a multiple. ``None``
    (an optional field's "off") is always valid; for a tuple field the range holds for every element.
    """

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    multiple_of: int | None = None

    def ok(self, v: Any) -> bool:  # written so that NaN fails every bound
        return ((self.gt is None or v > self.gt) and (self.ge is None or v >= self.ge)
                and (self.lt is None or v < self.lt) and (self.le is None or v <= self.le)
                and (self.multiple_of is None or v % self.multiple_of == 0))

    def __str__(self) -> str:
        lo = f"({self.gt:g}" if self.gt is not None else f"[{self.ge:g}" if self.ge is not None else ""
        hi = f"{self.lt:g})" if self.lt is not None else f"{self.le:g}]" if self.le is not None else ""
        if lo and hi:
            text = f"in {lo}, {hi}"
        else:
            bounds = ((">", self.gt), (">=", self.ge), ("<", self.lt), ("<=", self.le))
            text = " and ".join(f"{op} {v:g}" for op, v in bounds if v is not None) or "any value"
        return text + (f", a multiple of {self.multiple_of}" if self.multiple_of is not None else "")


ANY = Range()  # the explicit "every value is meant" marker


_OPS = {"<=": (operator.le, ">"), "<": (operator.lt, ">=")}


@dataclass(frozen=True)
class Check:
    """A rule between two fields, ``left op right``, listed in the class's ``CHECKS`` tuple, e.g.
    ``Check("warmup_updates", "<=", "max_updates")``. Skipped when either side is None, or when
    ``unless=(field, value)`` holds (a rule that does not apply in that mode)."""

    left: str
    op: Literal["<=", "<"]
    right: str
    unless: tuple[str, Any] | None = None

    def __str__(self) -> str:
        tail = f" (unless {self.unless[0]}={self.unless[1]!r})" if self.unless else ""
        return f"{self.left} {self.op} {self.right}{tail}"


def validate(cfg: Any) -> None:
    """Raise a one-line HarnessError for the first field outside its declared range or the first failed check."""
    cls = type(cfg)
    for f in dataclasses.fields(cls):
        valid, value = f.metadata.get("valid"), getattr(cfg, f.name)
        if valid is None or value is None:
            continue
        if not all(valid.ok(v) for v in (value if isinstance(value, tuple) else (value,))):
            why = f" ({f.metadata['help']})" if f.metadata.get("help") else ""
            raise HarnessError(f"invalid config: {f.name}={value!r} for {cls.__name__}; valid: {valid}{why}")
    for check in getattr(cls, "CHECKS", ()):
        a, b = getattr(cfg, check.left), getattr(cfg, check.right)
        if a is None or b is None or (check.unless and getattr(cfg, check.unless[0]) == check.unless[1]):
            continue
        holds, negated = _OPS[check.op]
        if not holds(a, b):
            raise HarnessError(f"invalid config: {check.left}={a!r} {negated} {check.right}={b!r} for "
                               f"{cls.__name__}; valid: {check}")


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
        cfg = cls(**values)
    except (ValueError, TypeError) as exc:
        raise HarnessError(f"invalid {cls.__name__}: {exc}") from None
    validate(cfg)
    return cfg


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


def load_target_config(target: str, *, backbone: str, config_file: str | Path | None = None,
                       overrides: dict[str, Any] | None = None, preset_prefix: str = "") -> Any:
    """The config class named by a spec's ``"module:Class"`` target, resolved with the presets next to it."""
    import importlib

    module, attr = target.split(":")
    return load_config(getattr(importlib.import_module(module), attr), method_module=module, backbone=backbone,
                       config_file=config_file, overrides=overrides, preset_prefix=preset_prefix)


def config_dict(cfg: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
