"""The toy world: a miniature of the paper's setting in which the truth is known.

* :mod:`lpo_bench.toy.world`   prompt grammar (T2I-CompBench++-like families), scenes,
  corruptions and the 32x32 renderer (numpy only).
* :mod:`lpo_bench.toy.parser`  an exact image parser for rendered scenes, soft on others.
* :mod:`lpo_bench.toy.oracle`  the "toy human": reward = alignment + aesthetics, and
  Bradley-Terry preference labels (Pick-a-Pic-like pairs).
* :mod:`lpo_bench.toy.metrics` toy evaluators mirroring the real ones, and the
  ``toy-*`` reward-model adapters named in :mod:`lpo_bench.registry`.

Importing this package imports nothing heavy; only the metric adapters import torch.
"""
