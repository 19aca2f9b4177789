"""Each method's cost over the reference method's: the method with role "proposed" among those benched, else the
first one given."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lpo_bench.bench.timing import median

# The acceptance check of the per-step cost claim: the reference method's sampling step costs at most a quarter of
# every other method's, at K = 4 and the released architectures' shapes.
ACCEPTANCE_MIN_RATIO = 4.0


def reference_method(specs: Sequence[Any]) -> str | None:
    proposed = [s.name for s in specs if s.role == "proposed"]
    return proposed[0] if proposed else (specs[0].name if specs else None)


def step_totals(shared: Mapping[str, Any], components: Mapping[str, Mapping[str, Any]], *,
                interleave: bool) -> dict[str, Any]:
    """One method's sampling step: the shared denoising step plus its components. Interleaved: per-round sums and
    their median; sequential: the sum of component medians. TFLOP when every part was counted."""
    parts = [shared, *components.values()]
    out: dict[str, Any] = {}
    if interleave:
        rounds = [sum(p["samples_s"][r] for p in parts) for r in range(len(shared["samples_s"]))]
        out["total_s"], out["total_samples_s"] = median(rounds), rounds
    else:
        out["total_s"] = sum(p["median_s"] for p in parts)
    if all("tflop" in p for p in parts):
        out["total_tflop"] = sum(p["tflop"] for p in parts)
    return out


def step_ratios(methods: Mapping[str, Mapping[str, Any]], reference: str | None, *,
                interleave: bool) -> dict[str, Any]:
    """``{"reference": name, "over_reference": {method: {"seconds", "seconds_rounds"?, "tflop"?}}}``;
    interleaved seconds are the median of per-round ratios (paired within a round)."""
    out: dict[str, Any] = {"reference": reference, "over_reference": {}}
    if reference is None:
        return out
    ref = methods[reference]
    for name, m in methods.items():
        if name == reference:
            continue
        r: dict[str, Any] = {}
        if interleave:
            rounds = [a / b for a, b in zip(m["total_samples_s"], ref["total_samples_s"], strict=True)]
            r["seconds"], r["seconds_rounds"] = median(rounds), rounds
        else:
            r["seconds"] = m["total_s"] / ref["total_s"]
        if "total_tflop" in m and "total_tflop" in ref:
            r["tflop"] = m["total_tflop"] / ref["total_tflop"]
        out["over_reference"][name] = r
    return out


def acceptance(step: Mapping[str, Any], *, applies: bool) -> dict[str, Any]:
    """Whether every other method's sampling step costs at least ``ACCEPTANCE_MIN_RATIO`` times the reference's
    (wall seconds). ``applies``: measured at K = 4 on a full-size backbone (the relative costs of the UNet, the
    VAE and the reward models differ at toy and tiny sizes)."""
    ref = step["reference"]
    return {"criterion": f"{ref} per sampling step <= 1/{ACCEPTANCE_MIN_RATIO:g} of every other method's "
                         f"(wall seconds), K = 4, full-size shapes",
            "applies": bool(applies), "min_ratio": ACCEPTANCE_MIN_RATIO,
            "passed": all(r["seconds"] >= ACCEPTANCE_MIN_RATIO for r in step["over_reference"].values())}


def train_ratios(train: Mapping[str, Mapping[str, Any]], reference: str | None) -> dict[str, Any]:
    """Seconds per update and per pair, and every work counter both methods book, per pair, over the reference's."""
    out: dict[str, Any] = {"reference": reference, "over_reference": {}}
    if reference is None:
        return out
    base = train[reference]
    for name, o in train.items():
        if name == reference:
            continue
        r = {"per_update_s": o["per_update_s"] / base["per_update_s"]}
        if o["per_pair_s"] and base["per_pair_s"]:
            r["per_pair_s"] = o["per_pair_s"] / base["per_pair_s"]
        for c in sorted(set(o["counts_per_pair"]) & set(base["counts_per_pair"])):
            if base["counts_per_pair"][c]:
                r[f"{c}_per_pair"] = o["counts_per_pair"][c] / base["counts_per_pair"][c]
        out["over_reference"][name] = r
    return out
