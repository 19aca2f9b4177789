"""The one training loop, for policies and step reward models alike.

``run_loop`` calls ``trainable.train_step`` once per optimiser update until ``is_done``: a policy update runs
inside ``ledger.step`` (unclaimed time is UPDATE), a reward-model update inside ``ledger.phase(RM_TRAIN)``.
After each update it checks the loss is finite, appends the logs to a JSONL train log (CHECKPOINT time: off
the headline clock), checkpoints every N updates, evaluates on a cadence of counted GPU-seconds or counted FLOPs, and stops at a
budget of counted GPU-hours or counted FLOPs (``LoopSettings.counted_flops``: the ledger's counters priced per
call, the same on every process). Under a reduced ``precision`` (``LoopSettings.precision``) each ``train_step`` runs inside its
autocast and the update's logs get its ``step_logs`` (fp16: loss scale, skipped update). Progress (updates,
rate, pairs/s when the logs carry ``pairs``, latest loss) goes to a ``lpo_bench.progress`` bar; its total is
``trainable.total_updates()`` when the trainable has that optional method, else unknown. Checkpoints hold tensors
and plain values only and load with ``weights_only=True``, so a checkpoint copied from elsewhere cannot execute
code.
"""

from __future__ import annotations

import contextlib
import json
import math
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lpo_bench import progress, records
from lpo_bench.errors import HarnessError
from lpo_bench.harness.dist import rng_state, set_rng_state
from lpo_bench.ledger import COUNTED, Ledger, Phase, check_identity

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class Checkpointer:
    """``checkpoint.pt`` of a run: {"step", "state", "rng", "ledger_totals", "ledger_counts"} (+ "precision": the fp16
    loss scaler's state, when there is one); only the main process writes. ``ledger_counts`` (the ledger's work
    counts per phase) is absent from older checkpoints: resuming one keeps the counts of the lost work."""

    path: Path
    write: bool = True
    precision: Any = None  # lpo_bench.harness.precision.Precision

    def save(self, step: int, trainable: Any, ledger: Ledger) -> None:
        if self.write:
            state = {"step": step, "state": trainable.state_dict(), "rng": rng_state(),
                     "ledger_totals": ledger.totals_dict(), "ledger_counts": ledger.counts_by_phase()}
            if self.precision is not None and (amp := self.precision.state_dict()):
                state["precision"] = amp
            records.atomic_torch_save(self.path, state)

    def exists(self) -> bool:
        return self.path.exists()

    def resume(self, trainable: Any, ledger: Ledger, *, resuming: bool, log: Callable[[str], None]) -> int:
        """On ``--resume`` with a checkpoint: load it into ``trainable``, the global RNGs and the ledger (CHECKPOINT
        time); returns the step to continue from (0 for a fresh start)."""
        if not (resuming and self.exists()):
            return 0
        with ledger.phase(Phase.CHECKPOINT):
            state = load_checkpoint(self.path)
            trainable.load_state_dict(state["state"])
            set_rng_state(state["rng"])
            ledger.rewind(state["ledger_totals"], state.get("ledger_counts"))
            if self.precision is not None:
                self.precision.load_state_dict(state.get("precision", {}))
        log(f"resumed {self.path.parent.name} at update {int(state['step'])}")
        return int(state["step"])


def load_checkpoint(path: Path) -> dict[str, Any]:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise HarnessError(f"{path} holds objects other than tensors and plain values (it could run code when "
                           f"loaded); refusing it: pass --overwrite to restart the run") from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise HarnessError(f"{path} cannot be read ({type(exc).__name__}); pass --overwrite to restart the run") from None
    if not isinstance(state, dict) or not {"step", "state", "rng", "ledger_totals"} <= set(state):
        raise HarnessError(f"{path} is not an lpo-bench checkpoint of this version; pass --overwrite to restart the run")
    return state


def open_ledger(run_dir: Path, *, device: str, dist: Any, clock: Callable[[], float]) -> Ledger:
    """The run's ledger: CUDA-synchronised timestamps on GPUs, GPU-hours x processes, max over ranks."""
    import torch

    return Ledger(run_dir / "ledger.jsonl", clock=clock, sync=torch.cuda.synchronize if device.startswith("cuda") else None,
                  devices=dist.world_size, reduce_max=dist.reduce_max_fn(), write=dist.is_main)


def close_session(ledger: Ledger, wall_start: float) -> tuple[float, float, dict[str, Any]]:
    """(this session's wall seconds, the ledger identity residual (raises past its tolerance), the ledger summary),
    read once at the end of a run's session."""
    wall_s = ledger.now() - wall_start
    return wall_s, check_identity(ledger.local_s, ledger.paused_s, wall_s), ledger.summary()


@dataclass
class LoopSettings:
    label: str  # "lpo", "lrm", ...: prefixes log lines
    phase: Phase | None = None  # None: policy updates (ledger.step); Phase.RM_TRAIN for reward models
    checkpoint_every_updates: int | None = None  # None: no periodic checkpoints
    budget_gpu_h: float | None = None  # counted GPU-hours
    stop_after_updates: int | None = None  # simulate an interruption (tests)
    train_log: Path | None = None
    eval_every_gpu_s: float | None = None
    precision: Any = None  # lpo_bench.harness.precision.Precision; None: fp32, no autocast
    budget_flops: float | None = None  # counted FLOPs (PREP + SAMPLE + SCORE + UPDATE)
    eval_every_flops: float | None = None  # takes the place of eval_every_gpu_s when set
    counted_flops: Callable[[], float] | None = None  # counted FLOPs so far; needed by the two above

    def flops_now(self) -> float:
        """Counted FLOPs so far; HarnessError when they cannot be known (an unpriced work counter)."""
        value = self.counted_flops() if self.counted_flops is not None else math.nan
        if not math.isfinite(value):
            raise HarnessError(f"[{self.label}] counted FLOPs are unknown (a work counter has no FLOP price, see "
                               f"flops.json); use --budget-gpu-h / --eval-every-gpu-s for this run")
        return value

    def eval_clock(self, ledger: Ledger) -> tuple[Callable[[], float], float] | None:
        """(what the evaluation cadence reads, its period), or None without a cadence."""
        if self.eval_every_flops:
            return self.flops_now, float(self.eval_every_flops)
        if self.eval_every_gpu_s:
            return ledger.counted_s, float(self.eval_every_gpu_s)
        return None

    def over_budget(self, ledger: Ledger) -> str | None:
        """Why the run must stop now (a budget is spent), else None."""
        if self.budget_gpu_h is not None and ledger.gpu_h(COUNTED) >= self.budget_gpu_h:
            return f"budget of {self.budget_gpu_h} GPU-h"
        if self.budget_flops is not None and self.flops_now() >= self.budget_flops:
            return f"budget of {self.budget_flops:.3g} counted FLOPs"
        return None


@dataclass
class LoopResult:
    step: int
    interrupted: bool  # stopped by stop_after_updates before the trainable was done
    budget_reached: bool


def check_finite(logs: dict[str, float], step: int, label: str, where: Path | None) -> None:
    loss = logs.get("loss")
    if loss is not None and not math.isfinite(float(loss)):
        kept = f"the last good checkpoint is kept in {where}; " if where is not None else ""
        raise HarnessError(f"[{label}] loss became {loss} at update {step}; {kept}lower the learning rate "
                           f"(--set lr=...) and rerun with --resume, or inspect the train log")


def run_loop(trainable: Any, ledger: Ledger, settings: LoopSettings, *, start_step: int = 0,
             checkpointer: Checkpointer | None = None, evaluate: Callable[[int], None] | None = None,
             write_logs: bool = True, log: Callable[[str], None] = print) -> LoopResult:
    """Train until done, budget or interruption (see module docstring)."""
    s = settings
    total = getattr(trainable, "total_updates", None)
    with progress.task(s.label, total=total() if callable(total) else None, unit="update", completed=start_step,
                       quiet=not write_logs) as bar:
        result, logs = _updates(trainable, ledger, s, bar, start_step, checkpointer, evaluate, write_logs, log)
    if logs:  # the summary line: the last update's logs
        state = "stopped" if result.interrupted or result.budget_reached else "finished"
        log(f"[{s.label}] {state} at update {result.step}: " + ", ".join(f"{k}={v:.4g}" for k, v in logs.items()))
    return result


def _show(bar: progress.Bar, logs: dict[str, float]) -> None:
    bar.advance(1, loss=float(logs["loss"]) if "loss" in logs else None,
                rates={"pairs": float(logs["pairs"])} if "pairs" in logs else None)


def _updates(trainable: Any, ledger: Ledger, s: LoopSettings, bar: progress.Bar, step: int,
             checkpointer: Checkpointer | None, evaluate: Callable[[int], None] | None, write_logs: bool,
             log: Callable[[str], None]) -> tuple[LoopResult, dict[str, float]]:
    """The updates of :func:`run_loop`; returns the result and the last update's logs."""
    logs: dict[str, float] = {}
    clock = s.eval_clock(ledger) if evaluate is not None else None
    next_eval = None if clock is None else (int(clock[0]() // clock[1]) + 1) * clock[1]
    while not trainable.is_done(step):
        if (why := s.over_budget(ledger)) is not None:
            log(f"[{s.label}] {why} reached at update {step}")
            return LoopResult(step, False, True), logs
        amp = s.precision.autocast() if s.precision is not None else contextlib.nullcontext()
        if s.phase is None:
            with ledger.step(step), amp:
                logs = trainable.train_step(step)
        else:
            with ledger.phase(s.phase), amp:
                logs = trainable.train_step(step)
        if s.precision is not None and (amp_logs := s.precision.step_logs()):
            logs = {**logs, **amp_logs}
        check_finite(logs, step, s.label, checkpointer.path.parent if checkpointer else None)
        step += 1
        if s.train_log is not None:
            with ledger.phase(Phase.CHECKPOINT):  # every rank enters each phase: row flushes are collective
                if write_logs:
                    with open(s.train_log, "a") as fh:
                        fh.write(json.dumps({"step": step, "gpu_h": ledger.gpu_h(COUNTED), **logs}) + "\n")
                _show(bar, logs)  # progress output is record keeping too: off the clock, on the ledger
        else:
            _show(bar, logs)
        if checkpointer is not None and s.checkpoint_every_updates and step % s.checkpoint_every_updates == 0:
            with ledger.phase(Phase.CHECKPOINT):
                checkpointer.save(step, trainable, ledger)
        if clock is not None and next_eval is not None and evaluate is not None and clock[0]() >= next_eval:
            with ledger.phase(Phase.EVAL):
                evaluate(step)
            next_eval = (int(clock[0]() // clock[1]) + 1) * clock[1]  # one evaluation when an update spans several periods
        if s.stop_after_updates is not None and step >= s.stop_after_updates:
            return LoopResult(step, not trainable.is_done(step), False), logs
    return LoopResult(step, False, False), logs
