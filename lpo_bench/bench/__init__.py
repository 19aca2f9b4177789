"""``lpo-bench bench``: what one sampling step and one training update cost, per registered method.

Everything method-specific comes from the method's spec (``lpo_bench.harness.spec.MethodSpec``); three parts,
wall seconds as the median over ``repeats``, CUDA synchronised around every timer:

1. ``sampling_step`` (``sampling_step.py``): the cost unit of Tab. 5 of arXiv 2502.01051 (K candidates, one
   prompt): one shared CFG denoising step, then each method's components (``bench_components``) with the calls
   its sampler makes, under ``torch.inference_mode``; FLOPs counted on the meta device. The paper's table is
   printed beside, as published.
2. ``train_step`` (``train_step.py``): whole training cycles through a file-backed ledger on a toy or tiny
   bundle; seconds by ledger phase and work counters, per cycle, update and pair.
3. ``overhead``: the same cycle from the same restored state with a null ledger; the paired difference and
   the ledger's own bookkeeping time are the harness overhead (target 2 %).

Ratios are each method's cost over the reference method's (``ratios.py``). Backbones (``backbones.py``): ``toy``,
``tiny-sd15``, ``tiny-sdxl``, and ``sd15`` / ``sdxl`` (``--random-weights``: the released architectures untrained,
``lpo_bench.models.full_size``; without it the registered loaders need the weights).

Fast paths, as switches: ``autocast_dtype`` ("bf16" / "fp16", for GPUs; the methods themselves run in the
bundle's dtype), ``gradient_checkpointing`` (``unet.enable_gradient_checkpointing()`` before setup) and
``compile`` (``torch.compile`` of each timed component; ``unet.compile()`` after setup; compile time falls in
the untimed warm-up). Always on: inference mode for sampling-step components, SDPA attention (the processors
found are reported), batched candidate scoring, cached prompt embeddings.
"""

from lpo_bench.bench.ratios import ACCEPTANCE_MIN_RATIO
from lpo_bench.bench.run import PARTS, parse_methods, run_bench
from lpo_bench.bench.train_step import OVERHEAD_TARGET_PCT, train_step_costs

__all__ = ["ACCEPTANCE_MIN_RATIO", "OVERHEAD_TARGET_PCT", "PARTS", "parse_methods", "run_bench", "train_step_costs"]
