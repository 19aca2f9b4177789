"""lpo-bench: a benchmark harness for step-level preference optimisation of diffusion models.

Importing this package is cheap: it never imports torch. Heavy modules are loaded lazily
through :mod:`lpo_bench.registry`.
"""

__version__ = "0.1.0"
