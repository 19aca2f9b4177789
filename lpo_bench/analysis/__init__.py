"""Analysis of finished run records: statistics, cost, time to target, quality, step accuracy, and the
comparison report (:func:`lpo_bench.analysis.compare.compare`). Importing this package imports nothing."""
