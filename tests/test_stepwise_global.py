"""Global step-wise recipes (LPO, SPO): per-prompt sampling generators, one canonical global pair list per round,
global batches split over ranks, global round logs, and the paper presets stated in global terms. The multi-process
runs themselves are in tests/test_distributed.py."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import PROMPTS, method_ctx

from lpo_bench import registry
from lpo_bench.config import build_config, load_target_config
from lpo_bench.methods.stepwise import sampler

SHAPE = (4, 8, 8)  # tiny bundle latents


def _gens(*keys: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(k) for k in keys]


# ---------------------------------------------------------------------------- per-prompt random draws
def test_row_draws_come_from_each_rows_own_generator():
    rows = sampler.row_randn(_gens(1, 2, 3), (2, 3))
    assert rows.shape == (3, 2, 3)
    for i, k in enumerate((1, 2, 3)):  # row i is what its generator alone draws, whatever the other rows
        assert torch.equal(rows[i], torch.randn(2, 3, generator=torch.Generator().manual_seed(k)))
    assert torch.equal(sampler.row_randn(_gens(2), (2, 3))[0], rows[1])
    ints = sampler.row_randint(_gens(5, 6, 7, 8), 4)
    assert ints.shape == (4,) and ints.dtype == torch.long and bool(((ints >= 0) & (ints < 4)).all())
    assert int(ints[2]) == int(torch.randint(0, 4, (1,), generator=torch.Generator().manual_seed(7)))


def test_a_prompt_gives_the_same_pairs_alone_or_in_a_batch(tmp_path):
    """The trajectory noise, candidate noise and continuation of a prompt come from its generator only, so the
    prompt forms the same step pairs in a batch of three as alone (up to the float noise of batched UNet calls)."""
    from lpo_bench.ledger import Ledger
    from lpo_bench.models.tiny import tiny_bundle

    bundle = tiny_bundle("sd15", seed=0)
    settings = sampler.RoundSettings(num_inference_steps=4, num_candidates=3)

    def scorer(cands, t_parent, t_child, cond_k, uncond_k):  # depends on the candidate only
        return cands.flatten(1).mean(1) * 10, None

    def run(prompts: list[str], keys: list[int]):
        cond = bundle.encode_prompts(prompts)
        return sampler.sample_step_pairs(bundle, bundle.unet, cond, bundle.encode_negative(len(prompts)),
                                         settings=settings, scorer=scorer, threshold=lambda t: 0.0,
                                         generators=_gens(*keys), ledger=Ledger(tmp_path / "l.jsonl"))

    batch, stats = run(list(PROMPTS[:3]), [11, 12, 13])
    alone, _ = run([PROMPTS[1]], [12])
    mine = batch.index(torch.nonzero(batch.prompt_idx == 1).flatten())
    assert len(alone) == len(mine) == 4  # threshold 0: every step of the prompt forms a pair
    assert torch.equal(mine.timesteps, alone.timesteps)
    for f in ("x_t", "x_w", "x_l"):
        assert torch.allclose(getattr(mine, f), getattr(alone, f), atol=1e-5), f
    other, _ = run([PROMPTS[1]], [99])  # another generator: other pairs
    assert not torch.allclose(other.x_w, alone.x_w)
    assert stats.logs()["pairs_valid"] == stats.logs()["pairs_scored"] == 12


# ---------------------------------------------------------------------------- one global list per round
def test_canonical_order_is_round_position_then_sampling_order():
    positions = torch.tensor([2, 0, 0, 1, 0])
    timesteps = torch.tensor([1, 1, 951, 501, 501])
    assert sampler.canonical_order(positions, timesteps).tolist() == [2, 4, 1, 3, 0]


def _pairs(positions: list[int], timesteps: list[int]) -> sampler.StepPairs:
    n = len(positions)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, n, *SHAPE, generator=g)
    return sampler.StepPairs(x[0], x[1], x[2], torch.tensor(timesteps), torch.tensor(positions) + 100,
                             torch.randn(n, generator=g), torch.randn(n, generator=g))


class _OneRankOfTwo:
    """Test double of ``Dist`` for rank ``rank`` of two: ``gather_objects`` returns both ranks' payloads in rank
    order, the other rank's being fixed in advance."""

    world_size = 2

    def __init__(self, rank: int, other: list) -> None:
        self.rank, self.other = rank, other

    def gather_objects(self, objs: list) -> list:
        return [*objs, *self.other] if self.rank == 0 else [*self.other, *objs]


class _OneProcess:
    world_size = 1


@pytest.mark.parametrize("drop_remainder", [False, True])
def test_the_global_pair_list_is_the_same_on_one_or_two_processes(drop_remainder):
    positions, timesteps = [0, 0, 1, 2, 2], [951, 501, 951, 951, 1]
    whole = _pairs(positions, timesteps)
    gen = lambda: torch.Generator().manual_seed(7)  # noqa: E731  # the shared order generator, same state
    one = sampler.gather_round_pairs(_OneProcess(), whole, torch.tensor(positions), gen(),
                                     drop_remainder=drop_remainder)
    assert len(one) == 5  # one process: N mod 1 = 0, nothing dropped
    # two ranks: rank 0 sampled round positions 0 and 2, rank 1 position 1 (in its own, shuffled, local order)
    r0, r1 = torch.tensor([4, 0, 3, 1]), torch.tensor([2])
    payload = lambda idx: {"pairs": {f: getattr(whole.index(idx), f) for f in whole.__dataclass_fields__},  # noqa: E731
                           "positions": torch.tensor(positions)[idx]}
    views = [sampler.gather_round_pairs(_OneRankOfTwo(0, [payload(r1)]), whole.index(r0), torch.tensor(positions)[r0],
                                        gen(), drop_remainder=drop_remainder),
             sampler.gather_round_pairs(_OneRankOfTwo(1, [payload(r0)]), whole.index(r1), torch.tensor(positions)[r1],
                                        gen(), drop_remainder=drop_remainder)]
    for view in views:
        expect = one.index(torch.arange(4)) if drop_remainder else one  # official: N mod P = 1 pair dropped
        assert len(view) == len(expect)
        for f in whole.__dataclass_fields__:
            assert torch.equal(getattr(view, f), getattr(expect, f)), f
    perm = torch.randperm(5, generator=gen())  # the canonical order is 0..4 here (positions then t descending)
    assert one.prompt_idx.tolist() == (torch.tensor(positions) + 100)[perm].tolist()


# ---------------------------------------------------------------------------- round logs, summed over ranks
def test_round_stats_hand_values_and_sum_over_ranks():
    a = sampler.RoundStats()
    a.add(951, torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([True, False]))
    b = sampler.RoundStats()
    b.add(1, torch.tensor([[0.0, 0.0], [1.0, 1.0]]), torch.tensor([True, True]))
    both = sampler.RoundStats.from_vector(a.vector() + b.vector())  # what the all-reduce of two ranks gives
    logs = both.logs()
    assert logs["pairs_valid"] == 3 and logs["pairs_scored"] == 4
    assert logs["valid_frac_gt751"] == 0.5 and logs["valid_frac_lt251"] == 1.0
    assert "valid_frac_501_750" not in logs and "valid_frac_251_500" not in logs  # bands never scored
    # scores 1,2,3,4,0,0,1,1: mean 12/8; squared deviations sum to 14, sample variance 14/7
    assert logs["score_mean"] == pytest.approx(1.5) and logs["score_std"] == pytest.approx(math.sqrt(2))
    assert a.logs() == {"pairs_valid": 1.0, "pairs_scored": 2.0, "valid_frac_gt751": 0.5,
                        "score_mean": 2.5, "score_std": pytest.approx(math.sqrt(5 / 3))}
    assert sampler.RoundStats().logs() == {"pairs_valid": 0.0, "pairs_scored": 0.0}


# ---------------------------------------------------------------------------- global batches in one process
def test_updates_take_global_batches_of_the_round_list(tmp_path):
    """4 prompts x 3 trained steps at threshold 0 = 12 pairs per round in global batches of 5, 5, 2."""
    from lpo_bench.models.tiny import tiny_bundle

    spec = registry.method_spec("lpo")
    stage = registry.reward_model_spec(spec.reward_stage)
    bundle = tiny_bundle("sd15", seed=0)
    rm = registry.load_target(stage.random_model)(bundle, full_size=False).save(tmp_path / "lrm")
    cfg = build_config(registry.load_target(spec.config), {
        "num_inference_steps": 3, "prompts_per_round": 4, "train_batch_pairs": 5, "epochs": 1, "num_candidates": 2,
        "threshold_min": 0.0, "threshold_max": 0.0, "lora_rank": 2})
    ctx = method_ctx(bundle, cfg, tmp_path / "run", reward_model_dir=rm)
    method = registry.load_target(spec.method)()
    method.setup(ctx)
    logs = []
    for step in range(3):
        with ctx.ledger.step(step):
            logs.append(method.train_step(step))
    assert [r["pairs_global"] for r in logs] == [5, 5, 2] and [r["pairs"] for r in logs] == [5, 5, 2]
    assert logs[0]["pairs_valid"] == 12 and "pairs_valid" not in logs[1]  # round logs come with its first update
    assert method.is_done(3) and method.rounds == 1
    assert sorted(method.buffer.prompt_idx.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert method.prompt_generator(0, 2).initial_seed() != method.prompt_generator(1, 2).initial_seed()


# ---------------------------------------------------------------------------- presets in global terms
# (method, backbone): (prompts per round, pairs per update) PER GPU in the official configs, which ran on 4 GPUs
# (accelerate_cfg/1m4g_fp16.yaml num_processes 4 in Kwai-Kolors/LPO@9c2e8b8 lpo/ and RockeyCoss/SPO@27a8642
# spo_training_and_inference/); SPO SDXL: train_batch_size 2 x gradient_accumulation_steps 2.
OFFICIAL_PER_GPU = {("lpo", "sd15"): (5, 10), ("lpo", "sd21"): (5, 10), ("lpo", "sdxl"): (4, 4),
                    ("spo", "sd15"): (10, 10), ("spo", "sdxl"): (2, 2 * 2)}


@pytest.mark.parametrize(("name", "backbone"), sorted(OFFICIAL_PER_GPU))
def test_paper_presets_are_the_official_per_gpu_batches_times_four_gpus(name, backbone):
    cfg = load_target_config(registry.method_spec(name).config, backbone=backbone)
    per_gpu_prompts, per_gpu_pairs = OFFICIAL_PER_GPU[(name, backbone)]
    assert (cfg.prompts_per_round, cfg.train_batch_pairs) == (4 * per_gpu_prompts, 4 * per_gpu_pairs)
    assert cfg.micro_batch_pairs == per_gpu_pairs // (2 if (name, backbone) == ("spo", "sdxl") else 1)


@pytest.mark.parametrize("name", ["lpo", "spo"])
def test_toy_presets_keep_their_one_process_batches(name):
    cfg = load_target_config(registry.method_spec(name).config, backbone="toy")
    assert (cfg.prompts_per_round, cfg.train_batch_pairs) == (16, 16)


def test_gap_stats_of_several_processes_merge():
    a, b = sampler.GapStats(), sampler.GapStats()
    a.add(951, torch.tensor([0.1, 0.3]), torch.tensor([False, True]))
    b.add(951, torch.tensor([0.2]), torch.tensor([False]))
    b.add(1, torch.tensor([0.05]), torch.tensor([False]))
    m = sampler.GapStats.merge([a, b, sampler.GapStats()])  # a rank that sampled no prompt has none
    assert m.scored == {951: 3, 1: 1} and m.passed == {951: 1, 1: 0}
    assert m.best == {951: pytest.approx(0.3), 1: pytest.approx(0.05)}
