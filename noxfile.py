"""nox sessions that install the project and reproduce its results.

    nox                      # tests + lint
    nox -s demo              # the toy pipeline end to end into reports/demo
    nox -s reproduce-toy     # 3 seeds of every method on the toy world, then compare -> reports/toy
    nox -s reproduce-sd15    # the paper's SD1.5 recipes through `accelerate launch` (needs weights + GPUs)
    nox -s reproduce-sdxl    # the same for SDXL
    nox -s toy-pretrain      # re-create the shipped toy base model (deterministic, ~15 min on 2 cores)
    nox -s bench             # per-step cost of each method (lpo-bench bench)
    nox -s t2i-compbench-env # builds the isolated T2I-CompBench detector environment
"""

from __future__ import annotations

import os

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _install(session: nox.Session, extras: str = "dev,metrics") -> None:
    session.install("-e", f".[{extras}]")


@nox.session
def tests(session: nox.Session) -> None:
    """The default, CPU-only, offline test run (slow/gpu/network markers deselected)."""
    _install(session)
    session.run("pytest", *session.posargs, env=OFFLINE)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "lpo_bench", "methods", "baselines", "tests", "noxfile.py")


@nox.session
def demo(session: nox.Session) -> None:
    """Toy world end to end (pairs, LRM+LPO, SPM+SPO, Diffusion-DPO, eval, step accuracy, compare)."""
    _install(session)
    session.run("lpo-bench", "demo", "--report", "reports/demo", *session.posargs, env=OFFLINE)


@nox.session(name="reproduce-toy")
def reproduce_toy(session: nox.Session) -> None:
    """3 seeds of LPO, SPO and Diffusion-DPO on the toy world, evaluated and compared into reports/toy."""
    _install(session)
    session.run("lpo-bench", "demo", "--seeds", "0,1,2", "--out-root", "runs/reproduce-toy", "--report",
                "reports/toy", *session.posargs, env=OFFLINE)


def _reproduce_real(session: nox.Session, backbone: str) -> None:
    """The paper's recipe on a real backbone, multi-GPU through accelerate launch.

    Needs the backbone weights in the HF cache (or --weights-dir via posargs), Pick-a-Pic v1 (LRM/SPM) and
    v2 (Diffusion-DPO) local copies in $LPO_BENCH_DATA, and GPUs. Runs each method, then evaluation and compare.
    """
    _install(session)
    data = os.environ.get("LPO_BENCH_DATA")
    if not data:
        session.error("set LPO_BENCH_DATA to a directory with pickapic_v1/, pickapic_v2/ and the prompt files")
    nproc = os.environ.get("NUM_GPUS", "4")
    launch = ["accelerate", "launch", "--multi_gpu", "--num_processes", nproc, "-m", "lpo_bench"]
    out = f"runs/reproduce-{backbone}"
    common = ["--backbone", backbone, "--out-root", out, "--data-dir", data, *session.posargs]
    session.run(*launch, "train", "--method", "lpo", "--pairs", f"{data}/pickapic_v1", *common)
    session.run(*launch, "train", "--method", "spo", "--pairs", f"{data}/pickapic_v1", *common)
    session.run(*launch, "train", "--method", "diffusion-dpo", "--pairs", f"{data}/pickapic_v2", *common)
    for run in sorted(p for p in (os.listdir(f"{out}/train") if os.path.isdir(f"{out}/train") else [])):
        for suite in ("general", "compbench"):
            session.run("lpo-bench", "eval", "--model", f"{out}/train/{run}", "--suite", suite, "--data-dir", data,
                        "--out-root", out)
    session.run("lpo-bench", "compare", out, "--out", f"reports/{backbone}")


@nox.session(name="reproduce-sd15")
def reproduce_sd15(session: nox.Session) -> None:
    _reproduce_real(session, "sd15")


@nox.session(name="reproduce-sdxl")
def reproduce_sdxl(session: nox.Session) -> None:
    _reproduce_real(session, "sdxl")


@nox.session(name="toy-pretrain")
def toy_pretrain(session: nox.Session) -> None:
    """Re-create the toy base model; compare its sha256 with lpo_bench/toy/assets/base/pretrain_report.json."""
    _install(session)
    session.run("lpo-bench", "toy", "pretrain", "--out", "runs/toy-pretrain", *session.posargs, env=OFFLINE)


@nox.session
def bench(session: nox.Session) -> None:
    _install(session)
    session.run("lpo-bench", "bench", "--method", "all", *session.posargs, env=OFFLINE)


@nox.session(name="t2i-compbench-env", venv_backend="none")
def t2i_compbench_env(session: nox.Session) -> None:
    """Build the isolated T2I-CompBench++ detector environment (UniDet + DPT) used by lpo_bench/metrics/external.py.

    It is separate because T2I-CompBench pins old detectron2/diffusers versions that conflict with ours.
    """
    env_dir = os.environ.get("T2I_COMPBENCH_ENV", ".t2i-compbench-env")
    session.run("python3", "-m", "venv", env_dir, external=True)
    pip = f"{env_dir}/bin/pip"
    session.run(pip, "install", "torch", "torchvision", "opencv-python", "timm", "numpy", "pillow", external=True)
    session.log(f"detector environment at {env_dir}; point LPO_BENCH_DETECTOR_CMD at its scorer script "
                f"(see README, 'T2I-CompBench++ spatial and numeracy')")
