"""Two CPU processes (torchrun, gloo) train LPO and SPO on exactly the pairs one process does, in the same order, to
the same LoRA weights within float tolerance; the two ranks, whose shares of pairs are uneven (one rank holds none
in some updates), keep bit-identical weights. Settings: ``tests/scripts/stepwise_ddp.py``."""

import shutil
import sys
from pathlib import Path

import pytest
import torch
from helpers import launch

SCRIPT = Path(__file__).parent / "scripts" / "stepwise_ddp.py"
TORCHRUN = Path(sys.executable).parent / "torchrun"
FIELDS = ("prompt_idx", "timesteps", "x_t", "x_w", "x_l")

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("torchrun") is None and not TORCHRUN.exists(),
                                 reason="torchrun not installed")]


def _run(args: list[str], nproc: int, timeout: int = 300) -> None:
    launch(SCRIPT, args, nproc, timeout)


@pytest.fixture(scope="module", params=["lpo", "spo"])
def runs(request, tmp_path_factory):
    """(method, the 1-process record, [rank 0, rank 1] records of the 2-process run), one reward model for both."""
    from lpo_bench import registry
    from lpo_bench.models.tiny import tiny_bundle

    name = request.param
    tmp = tmp_path_factory.mktemp(f"{name}_ddp")
    stage = registry.reward_model_spec(registry.method_spec(name).reward_stage)
    rm = tmp / stage.name
    registry.load_target(stage.random_model)(tiny_bundle("sd15", seed=0), full_size=False).save(rm)
    _run([name, str(rm), str(tmp / "one")], 1)
    _run([name, str(rm), str(tmp / "two")], 2)
    load = lambda p: torch.load(p, weights_only=True)  # noqa: E731
    return name, load(tmp / "one" / "rank0.pt"), [load(tmp / "two" / f"rank{r}.pt") for r in (0, 1)]


def test_two_processes_train_on_the_pairs_one_process_does(runs):
    name, one, two = runs
    assert len(one["updates"]) == len(two[0]["updates"]) == len(two[1]["updates"]) == 6  # 2 rounds x (7, 7, 1)
    for u, (a, b0, b1) in enumerate(zip(one["updates"], *(t["updates"] for t in two), strict=True)):
        assert a["n_global"] == b0["n_global"] == b1["n_global"] == len(a["timesteps"]) == (1 if u % 3 == 2 else 7)
        both = {f: torch.cat([b0[f], b1[f]]) for f in FIELDS}  # contiguous rank slices, rank 0 first
        assert torch.equal(both["prompt_idx"], a["prompt_idx"]), f"update {u}: other prompts"
        assert torch.equal(both["timesteps"], a["timesteps"]), f"update {u}: other timesteps"
        for f in ("x_t", "x_w", "x_l"):  # the second round samples with weights that differ by float noise
            assert torch.allclose(both[f], a[f], rtol=1e-4, atol=1e-4), (u, f, float((both[f] - a[f]).abs().max()))
    trained = {(int(p), int(t)) for upd in one["updates"] for p, t in zip(upd["prompt_idx"], upd["timesteps"])}
    assert len(trained) == 15  # every prompt's 3 steps formed a pair; both rounds train on all of them
    for k, w in one["lora"].items():
        assert float((w - two[0]["lora"][k]).abs().max()) <= 1e-5, k
    moved = max(float(w.abs().max()) for k, w in one["lora"].items() if "lora_B" in k)
    assert moved > 1e-3  # B starts at 0: the weights compared above really trained
    for la, lb in zip(one["logs"], two[0]["logs"], strict=True):  # logs are global: the same on 1 and 2 processes
        assert la["pairs_global"] == lb["pairs_global"] and la.get("pairs_valid") == lb.get("pairs_valid")
        assert la["loss"] == pytest.approx(lb["loss"], rel=1e-3)


def test_ranks_with_uneven_shares_keep_bit_identical_weights(runs):
    name, _, two = runs
    shares = [(len(b0["timesteps"]), len(b1["timesteps"])) for b0, b1 in zip(two[0]["updates"], two[1]["updates"])]
    assert shares == [(4, 3), (4, 3), (1, 0)] * 2  # uneven, and rank 1 holds no pair in updates 3 and 6
    assert all(row["grad_norm"] > 1e-3 for row in two[0]["logs"])  # clipping (max norm 1e-3) acted in every update
    assert two[0]["lora"].keys() == two[1]["lora"].keys()
    assert all(torch.equal(two[0]["lora"][k], two[1]["lora"][k]) for k in two[0]["lora"]), name
