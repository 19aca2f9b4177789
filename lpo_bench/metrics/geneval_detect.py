"""GenEval's Mask2Former detector, run standalone in GenEval's own pinned environment.

GenEval (djghosh13/geneval@af4902f evaluation/evaluate_images.py) runs detection and scoring in one CUDA-only
script. lpo-bench keeps only the detection half out of process: this script writes every kept detection
(box, score, instance mask) to JSON, and lpo_bench.metrics.geneval applies GenEval's rules in-process.

It must not import lpo_bench and must run on Python 3.9 with numpy, torch, mmdet 2.x and Pillow only
(build that environment with ``nox -s geneval-env``)::

    python geneval_detect.py --images DIR --out FILE --model-path DIR [--model-config PATH]
        [--device cuda|cpu] [--min-score 0.3] [--max-objects 16]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.util
import json
import os
import sys
import tempfile

import numpy as np

FORMAT = "lpo-bench-geneval-detections/v1"
MODEL = "mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco"
CHECKPOINT_URL = ("https://download.openmmlab.com/mmdetection/v2.0/mask2former/" + MODEL + "/" + MODEL
                  + "_20220504_001756-743b7d99.pth")  # from GenEval's evaluation/download_models.sh
CONFIG_REL = os.path.join("mask2former", MODEL + ".py")
# GenEval names the detector's classes by position with evaluation/object_names.txt, which is mmdet's COCO
# order with three names made unambiguous; prompts use GenEval's names, so those are what we write.
GENEVAL_RENAMES = {"mouse": "computer mouse", "remote": "tv remote", "keyboard": "computer keyboard"}


class UsageError(Exception):
    """A user mistake: reported as one line with exit code 2."""


def select_rows(scores: np.ndarray, min_score: float, max_objects: int) -> list[int]:
    """Row indices GenEval keeps for one class: by score descending, score > min_score, at most max_objects."""
    scores = np.asarray(scores)
    order = np.argsort(scores)[::-1]  # GenEval's exact ordering (default sort kind), ties included
    order = order[scores[order] > min_score]
    return [int(i) for i in order[:max(max_objects, 0)]]


def _crop_region(box, height: int, width: int) -> tuple[int, int, int, int]:
    # Pillow's Image.crop rounds each coordinate with Python's round(); GenEval crops with it, so the stored
    # region covers exactly the pixels a crop of this box would see, clamped to the image.
    x0, y0, x1, y1 = (int(round(float(v))) for v in box[:4])
    x0c, y0c = min(max(x0, 0), width), min(max(y0, 0), height)
    return x0c, y0c, max(min(x1, width) - x0c, 0), max(min(y1, height) - y0c, 0)


def encode_mask(mask: np.ndarray | None, box) -> dict | None:
    """The instance mask inside the Pillow-rounded box, bit-packed row-major and base64-encoded."""
    if mask is None:
        return None
    mask = np.asarray(mask).astype(bool)
    x0, y0, w, h = _crop_region(box, mask.shape[0], mask.shape[1])
    if w == 0 or h == 0:
        return {"origin": [x0, y0], "size": [0, 0], "bits": ""}
    bits = np.packbits(mask[y0:y0 + h, x0:x0 + w].ravel())
    return {"origin": [x0, y0], "size": [w, h], "bits": base64.b64encode(bits.tobytes()).decode("ascii")}


def decode_mask(entry: dict | None, height: int, width: int) -> np.ndarray | None:
    """Inverse of encode_mask: a (height, width) bool array, False outside the stored region."""
    if entry is None:
        return None
    (x0, y0), (w, h) = entry["origin"], entry["size"]
    out = np.zeros((height, width), dtype=bool)
    if w and h:
        packed = np.frombuffer(base64.b64decode(entry["bits"]), dtype=np.uint8)
        out[y0:y0 + h, x0:x0 + w] = np.unpackbits(packed, count=w * h).reshape(h, w).astype(bool)
    return out


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _default_config() -> str:
    # find_spec locates mmdet without importing it, so a wrong environment fails fast with one line.
    spec = importlib.util.find_spec("mmdet")
    if spec is None or not spec.origin:
        raise UsageError("mmdet is not importable by this Python; build GenEval's environment with "
                         "`nox -s geneval-env` and run this script with its python")
    pkg = os.path.dirname(spec.origin)
    candidates = [os.path.normpath(os.path.join(pkg, "..", "configs", CONFIG_REL)),  # source install (GenEval)
                  os.path.join(pkg, ".mim", "configs", CONFIG_REL)]  # pip wheel
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise UsageError(f"Mask2Former config not found at {candidates[0]} or {candidates[1]}; pass --model-config")


def _check_inputs(args: argparse.Namespace) -> tuple[list[str], str, str]:
    if args.max_objects < 0:
        raise UsageError("--max-objects must be >= 0")
    if not os.path.isdir(args.images):
        raise UsageError(f"--images {args.images} is not a directory")
    names = sorted(n for n in os.listdir(args.images) if n.endswith(".png")
                   and os.path.isfile(os.path.join(args.images, n)))
    if not names:
        raise UsageError(f"no *.png images in {args.images}")
    checkpoint = os.path.join(args.model_path, MODEL + ".pth")
    if not os.path.isfile(checkpoint):
        raise UsageError(f"checkpoint {checkpoint} not found; download {CHECKPOINT_URL} to that path "
                         f"(or run `nox -s geneval-env`)")
    config = args.model_config or _default_config()
    if not os.path.isfile(config):
        raise UsageError(f"--model-config {config} not found")
    return names, checkpoint, config


def _classes(model) -> list[str]:
    names = [GENEVAL_RENAMES.get(n, n) for n in getattr(model, "CLASSES", None) or ()]
    if len(names) != 80:
        raise UsageError(f"expected the detector's 80 COCO classes, got {len(names)}: wrong checkpoint?")
    return names


def _detect_image(model, path: str, classes: list[str], args: argparse.Namespace) -> dict:
    from mmdet.apis import inference_detector
    from PIL import Image, ImageOps

    result = inference_detector(model, path)
    bbox = result[0] if isinstance(result, tuple) else result
    segm = result[1] if isinstance(result, tuple) and len(result) > 1 else None
    with Image.open(path) as img:
        width, height = ImageOps.exif_transpose(img).size  # the image GenEval crops colors from
    detections = []
    for index, name in enumerate(classes):
        rows = np.asarray(bbox[index]).reshape(-1, 5)
        for row in select_rows(rows[:, 4], args.min_score, args.max_objects):
            box = [float(v) for v in rows[row, :4]]
            mask = None if segm is None else encode_mask(segm[index][row], box)
            detections.append({"class": name, "box": box, "score": float(rows[row, 4]), "mask": mask})
    return {"image": os.path.basename(path), "width": width, "height": height, "detections": detections}


def _write_json_atomic(path: str, payload: dict) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".geneval-detect-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(payload, fh)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def run(args: argparse.Namespace) -> None:
    names, checkpoint, config = _check_inputs(args)  # before the heavy imports: mistakes fail fast
    import mmcv
    import mmdet
    import torch
    from mmdet.apis import init_detector

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda but CUDA is not available to this torch")
    if device == "cpu":
        print("warning: running Mask2Former on CPU; this is slow (minutes per image)", file=sys.stderr)
    model = init_detector(config, checkpoint, device=device)
    classes = _classes(model)
    images = [_detect_image(model, os.path.join(args.images, n), classes, args) for n in names]
    detector = {"model": MODEL, "config": os.path.abspath(config), "checkpoint": os.path.abspath(checkpoint),
                "checkpoint_sha256": _sha256(checkpoint), "mmdet": mmdet.__version__, "mmcv": mmcv.__version__,
                "torch": torch.__version__, "device": device, "min_score": args.min_score,
                "max_objects": args.max_objects}
    _write_json_atomic(args.out, {"format": FORMAT, "detector": detector, "classes": classes, "images": images})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run GenEval's Mask2Former on *.png images; write detections "
                                                 f"as JSON ({FORMAT}).")
    parser.add_argument("--images", required=True, help="folder of *.png images (processed sorted by name)")
    parser.add_argument("--out", required=True, help="output JSON file (written atomically)")
    parser.add_argument("--model-path", required=True, help=f"folder holding {MODEL}.pth")
    parser.add_argument("--model-config", default=None, help="Mask2Former config (default: mmdet's own)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None,
                        help="default: cuda if available, else cpu")
    parser.add_argument("--min-score", type=float, default=0.3, help="keep scores strictly above this")
    parser.add_argument("--max-objects", type=int, default=16, help="at most this many detections per class")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except UsageError as exc:
        print(f"geneval_detect: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
