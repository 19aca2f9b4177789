"""Package discovery only (everything else is in pyproject.toml): every package under lpo_bench/, and the
method folders under methods/ and baselines/, installed as lpo_bench.methods.* and lpo_bench.baselines.*."""

from setuptools import find_packages, setup


def _mapped(folder: str, prefix: str) -> list[str]:
    return [prefix] + [f"{prefix}.{p}" for p in find_packages(folder)]


setup(packages=find_packages(include=["lpo_bench", "lpo_bench.*"])
      + _mapped("methods", "lpo_bench.methods") + _mapped("baselines", "lpo_bench.baselines"))
