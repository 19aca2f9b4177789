"""Learning curves on a FLOP axis: FLOP budgets and evaluation cadences in the loop, the plateau rule, and
time-to-target in FLOPs."""

from __future__ import annotations

import math

import pytest

from lpo_bench.analysis import stats
from lpo_bench.errors import HarnessError
from lpo_bench.harness.loop import LoopSettings, run_loop
from lpo_bench.ledger import Ledger


class _Work:
    """A trainable whose every update costs 10 "FLOPs" (read by the settings' counted_flops)."""

    def __init__(self, updates: int = 100) -> None:
        self.flops, self.updates = 0.0, updates

    def is_done(self, step: int) -> bool:
        return step >= self.updates

    def train_step(self, step: int) -> dict[str, float]:
        self.flops += 10.0
        return {"loss": 1.0}


def test_flop_budget_and_cadence():
    work, evals = _Work(), []
    settings = LoopSettings(label="t", budget_flops=55.0, eval_every_flops=20.0, counted_flops=lambda: work.flops)
    res = run_loop(work, Ledger(None), settings, evaluate=evals.append, log=lambda *_: None)
    # counted after update k is 10k: evaluations when it crosses 20, 40, 60; the budget stops before update 7
    assert evals == [2, 4, 6] and res.step == 6 and res.budget_reached


def test_flop_cadence_fires_once_when_an_update_spans_several_periods():
    work, evals = _Work(updates=3), []
    settings = LoopSettings(label="t", eval_every_flops=4.0, counted_flops=lambda: work.flops)
    run_loop(work, Ledger(None), settings, evaluate=evals.append, log=lambda *_: None)
    assert evals == [1, 2, 3]  # 10 per update crosses 2-3 periods of 4: one evaluation each time


def test_flop_cadence_takes_the_place_of_the_gpu_second_cadence():
    work, evals = _Work(updates=4), []
    settings = LoopSettings(label="t", eval_every_gpu_s=1e-12, eval_every_flops=25.0, counted_flops=lambda: work.flops)
    run_loop(work, Ledger(None), settings, evaluate=evals.append, log=lambda *_: None)
    assert evals == [3]


def test_unknown_flops_refuse_a_flop_budget():
    settings = LoopSettings(label="t", budget_flops=5.0, counted_flops=lambda: math.nan)
    with pytest.raises(HarnessError, match="counted FLOPs are unknown"):
        run_loop(_Work(), Ledger(None), settings, log=lambda *_: None)


def test_plateau_rule():
    assert stats.plateau([0.40, 0.42, 0.41], [0.50, 0.52, 0.51])  # all share [0.42, 0.50]
    assert not stats.plateau([0.40, 0.55, 0.41], [0.50, 0.65, 0.51])  # the middle one is above the others
    assert not stats.plateau([0.4], [0.5])  # one evaluation is no plateau
    assert not stats.plateau([0.4, math.nan], [0.5, 0.6])


def test_time_to_target_in_flops_hand_values():
    # first evaluation reaching 0.5 is at 3e9 FLOPs
    assert stats.time_to_target([1e9, 2e9, 3e9, 4e9], [0.1, 0.4, 0.5, 0.6], 0.5) == 3e9
    assert math.isinf(stats.time_to_target([1e9, 2e9], [0.1, 0.2], 0.5))


def test_train_refuses_bad_flop_settings():
    from lpo_bench.harness.train import TrainRequest, plan_run
    from lpo_bench.toy.default_pairs import default_toy_pairs  # noqa: F401  (plan_run's default)

    for kw, why in (({"budget_flops": 0.0}, "--budget-flops must be > 0"),
                    ({"eval_every_flops": 1e9}, "--eval-suite")):
        with pytest.raises(HarnessError, match=why):
            plan_run(TrainRequest(method="diffusion-dpo", backbone="toy", **kw), prompts=None,
                     default_pairs=lambda *a, **k: pytest.fail("refused before any pairs"))


def test_toy_run_evaluates_on_a_flop_cadence_and_stops_at_a_flop_budget(tiny_pairs, tmp_path):
    """Diffusion-DPO (the cheapest toy method) with a FLOP cadence: every evaluation records the counted FLOPs
    at that point; the budget stops the run."""
    import json

    from lpo_bench import records
    from lpo_bench.data.prompts import PromptList
    from lpo_bench.harness.flops import price, read_record
    from lpo_bench.harness.train import TrainRequest, train_run
    from lpo_bench.toy.models import load_toy_bundle

    def run(**kw):
        req = TrainRequest(method="diffusion-dpo", backbone="toy", pairs=str(tiny_pairs), out_root=str(tmp_path / "r"),
                           overrides={"max_updates": 40, "pairs_per_update": 4, "micro_batch_pairs": 4},
                           eval_suite="toy-general", eval_prompts=2, **kw)
        return train_run(req, bundle=load_toy_bundle(), prompts=PromptList(["one circle"]), log=lambda *_: None)

    probe = run(stop_after_updates=1)  # one update: its counted FLOPs
    rec = read_record(probe)
    ledger = [json.loads(x) for x in (probe / "ledger.jsonl").read_text().splitlines()]
    counts = {}
    for row in ledger:
        for phase, c in row.get("counts_by_phase", {}).items():
            for k, n in c.items():
                counts.setdefault(phase, {})[k] = counts.setdefault(phase, {}).get(k, 0) + n
    per_update = price(counts, rec.measured).counted
    assert per_update > 0
    budget = 3.5 * per_update
    d = run(budget_flops=budget, eval_every_flops=1.0, overwrite=True)  # a cadence below one update: every update
    info = json.loads((d / "run.json").read_text())
    ev = records.read_measurements(d / "measurements.parquet").query("kind == 'eval_metric' and category == 'all'")
    ev = ev[ev["metric"] == "toy-oracle"].sort_values("train_step", kind="stable")
    n = info["updates"]
    assert 4 <= n < 40 and ev["train_step"].tolist() == [*range(1, n + 1), n]  # every update, then the final one
    flops_seen = ev["flops_at_measurement"].tolist()[:n]
    assert all(b > a for a, b in zip(flops_seen, flops_seen[1:]))
    assert flops_seen[-2] < budget <= flops_seen[-1]  # stopped at the first update that spent the budget
    assert flops_seen[-1] == pytest.approx(info["ledger"]["flops"]["flops_counted"], rel=1e-9)
