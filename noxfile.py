"""nox sessions that install the project and reproduce its results.

    nox                      # tests + lint
    nox -s demo              # the toy pipeline end to end into reports/demo
    nox -s reproduce-toy     # 3 seeds of every method on the toy world, then compare -> reports/toy
    nox -s reproduce-sd15    # the paper's SD1.5 recipes through `accelerate launch` (needs weights + GPUs)
    nox -s reproduce-sdxl    # the same for SDXL
    nox -s toy-pretrain      # re-create the shipped toy base model (bit-exact on one thread, ~35-40 min)
    nox -s bench             # per-step cost of each method (lpo-bench bench)
    nox -s t2i-compbench-env # builds the isolated T2I-CompBench detector environment
    nox -s geneval-env       # builds the isolated GenEval (Mask2Former, mmdet 2.x) detector environment
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import urllib.request

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
                "reports/toy", "--eval-prompts", "0", "--eval-images", "4", "--step-accuracy-pairs", "0", *session.posargs,
                env=OFFLINE)


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
    session.log(f"detector environment at {env_dir}; point LPO_BENCH_T2I_DETECTOR at its scorer script "
                f"(see README, 'T2I-CompBench++ spatial and numeracy')")


# GenEval (djghosh13/geneval@af4902f): versions from its environment.yml and README, checkpoint from
# evaluation/download_models.sh. The OpenMMLab file name ends in the first 8 hex digits of the sha256.
GENEVAL_MODEL = "mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco"
GENEVAL_CHECKPOINT_URL = (f"https://download.openmmlab.com/mmdetection/v2.0/mask2former/{GENEVAL_MODEL}/"
                          f"{GENEVAL_MODEL}_20220504_001756-743b7d99.pth")
GENEVAL_CHECKPOINT_SHA256_PREFIX = "743b7d99"


@nox.session(name="geneval-env", venv_backend="none")
def geneval_env(session: nox.Session) -> None:
    """Build the isolated GenEval detector environment (Python 3.9, torch 1.12.1 cu113, mmcv-full 1.7.1, mmdet 2.x).

    It is separate because mmdet 2.x needs torch 1.12 / mmcv-full 1.7; lpo_bench/metrics/geneval_detect.py runs
    in it and lpo-bench scores its detections in-process (lpo_bench.metrics.geneval).
    """
    env_dir = os.path.abspath(os.environ.get("GENEVAL_ENV", ".geneval-env"))
    if shutil.which("conda"):
        session.run("conda", "create", "-y", "-p", env_dir, "python=3.9", external=True)
    elif shutil.which("python3.9"):
        session.run("python3.9", "-m", "venv", env_dir, external=True)
    else:
        session.error("geneval-env needs `conda` or `python3.9` on PATH (GenEval's detector runs on Python 3.9)")
    pip = [f"{env_dir}/bin/python", "-m", "pip", "install"]
    session.run(*pip, "torch==1.12.1+cu113", "torchvision==0.13.1+cu113", "numpy==1.23.1", "pillow==9.4.0",
                "--extra-index-url", "https://download.pytorch.org/whl/cu113", external=True)
    # mmcv-full has no PyPI wheels for this torch/CUDA; OpenMMLab's index has the prebuilt ones.
    session.run(*pip, "mmcv-full==1.7.1", "-f", "https://download.openmmlab.com/mmcv/dist/cu113/torch1.12/index.html",
                "yapf==0.33.0", "addict==2.4.0", "opencv-python==4.6.0.66", "numpy==1.23.1", external=True)
    # The mmdet 2.x wheel ships its configs under mmdet/.mim/configs, which geneval_detect.py falls back to.
    session.run(*pip, "mmdet==2.28.2", "pycocotools==2.0.6", "scipy==1.9.1", "shapely==2.0.1",
                "terminaltables==3.1.10", "matplotlib==3.7.1", "numpy==1.23.1", external=True)

    ckpt_dir = os.path.join(env_dir, "checkpoints")
    ckpt = os.path.join(ckpt_dir, f"{GENEVAL_MODEL}.pth")
    if not os.path.isfile(ckpt):
        os.makedirs(ckpt_dir, exist_ok=True)
        session.log(f"downloading {GENEVAL_CHECKPOINT_URL}")
        urllib.request.urlretrieve(GENEVAL_CHECKPOINT_URL, ckpt + ".part")
        os.replace(ckpt + ".part", ckpt)
    digest = hashlib.sha256()
    with open(ckpt, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    sha = digest.hexdigest()
    session.log(f"checkpoint {ckpt} sha256 {sha}")
    if not sha.startswith(GENEVAL_CHECKPOINT_SHA256_PREFIX):
        session.error(f"checkpoint sha256 {sha} does not start with {GENEVAL_CHECKPOINT_SHA256_PREFIX} "
                      f"(the published file's); delete {ckpt} and rerun")

    script = os.path.abspath(os.path.join("lpo_bench", "metrics", "geneval_detect.py"))
    template = " ".join([shlex.quote(f"{env_dir}/bin/python"), shlex.quote(script), "--images", "{image_dir}",
                         "--out", "{out}", "--model-path", shlex.quote(ckpt_dir)])
    session.log(f"GenEval detector environment at {env_dir}; set\n"
                f"    export LPO_BENCH_GENEVAL_DETECTOR={shlex.quote(template)}")
