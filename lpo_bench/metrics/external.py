"""T2I-CompBench++ detector categories (2D/3D spatial, numeracy, complex-spatial) run out of process.

The official UniDet/DPT detectors need detectron2, an NC-licensed expert codebase and their own
pinned environment (torch 2.0.1, spaCy 3.5 + en_core_web_sm), so they run as a subprocess in that
environment; this module only parses their output and applies :mod:`compbench_rules`.

Protocol
--------
``command`` is an argv list; ``{image_dir}``, ``{category}`` and ``{out}`` are substituted::

    ["/envs/t2i/bin/python", "dump_detections.py", "--images", "{image_dir}",
     "--category", "{category}", "--out", "{out}"]

* input: ``image_dir`` holds PNGs named ``<prompt>_<NNNNNN>.png`` (T2I-CompBench naming: the prompt
  is the text before the first ``_``; NNNNNN is the question id, ``prompt_index * 10 + k``);
  ``category`` is one of ``spatial``, ``3d_spatial``, ``numeracy``, ``complex``.
* output: a UTF-8 JSON file ``{out}``::

    {"format": "lpo-bench-detections/v1",
     "detector": {...free-form provenance: checkpoints, commits...},
     "images": [{"image": "<prompt>_000000.png",
                 "tokens": [{"text": "a", "pos": "DET", "space_after": true}, ...],
                 "detections": [{"label": "dog", "box": [x1, y1, x2, y2], "score": 0.93,
                                 "depth": 0.41}, ...]}, ...]}

  ``tokens`` are spaCy ``en_core_web_sm`` tokens of the prompt (``text``, ``pos_``, whether
  ``whitespace_`` is non-empty). ``detections`` are in the detector's order (score-sorted, as
  detectron2 returns them), after its 0.5 score threshold, with unified label names
  (``detection_features.pt``) and boxes in the detector's input pixels (the official 479/480 px
  resize). ``depth`` (3d_spatial only) is the mean 8-bit depth map / 255 inside the box with the
  official transposed indexing (:func:`compbench_rules.box_mean_depth`).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from lpo_bench.errors import HarnessError
from lpo_bench.metrics import compbench_rules as rules

DETECTIONS_FORMAT = "lpo-bench-detections/v1"
DETECTOR_CATEGORIES = ("spatial", "3d_spatial", "numeracy", "complex")


@dataclass(frozen=True)
class ImageDetections:
    """Parsed detector output for one image."""

    image: str
    prompt: str
    question_id: int
    tokens: tuple[rules.Token, ...]
    detections: tuple[rules.Detection, ...]


@dataclass(frozen=True)
class ImageScore:
    """One per-image score row (``question_id`` orders images as the official scripts do)."""

    image: str
    prompt: str
    question_id: int
    score: float


def _parse_detection(raw: Any, where: str) -> rules.Detection:
    try:
        box = tuple(float(v) for v in raw["box"])
        depth = raw.get("depth")
        if len(box) != 4:
            raise ValueError("box needs 4 numbers")
        return rules.Detection(str(raw["label"]), box, float(raw["score"]), None if depth is None else float(depth))
    except (KeyError, TypeError, ValueError) as exc:
        raise HarnessError(f"bad detection in {where}: {exc!r}; expected {{label, box[4], score, depth?}}") from None


def document_images(data: Any, fmt: str, source: str) -> list[Any]:
    """The ``images`` list of a detector's JSON document in format ``fmt`` (HarnessError otherwise)."""
    if not isinstance(data, dict) or data.get("format") != fmt or not isinstance(data.get("images"), list):
        raise HarnessError(f"{source} is not a '{fmt}' document with an 'images' list")
    return data["images"]


def parse_detections(data: Any, source: str = "detector output") -> list[ImageDetections]:
    """Validate and parse a detections JSON document (see the module docstring)."""
    out = []
    for entry in document_images(data, DETECTIONS_FORMAT, source):
        try:
            name = str(entry["image"])
            prompt, qid = rules.parse_image_file_name(name)
            tokens = tuple(
                rules.Token(str(t["text"]), str(t["pos"]), bool(t.get("space_after", True))) for t in entry["tokens"]
            )
            raw_dets = entry["detections"]
        except (KeyError, TypeError, ValueError) as exc:
            raise HarnessError(f"bad image entry in {source}: {exc!r}; expected {{image, tokens, detections}}") from None
        dets = tuple(_parse_detection(d, f"{source} {name}") for d in raw_dets)
        out.append(ImageDetections(name, prompt, qid, tokens, dets))
    return sorted(out, key=lambda r: r.question_id)


def score_image(
    item: ImageDetections, category: str, new_objects: tuple[Sequence[str], Sequence[str]] | None = None
) -> float:
    """The official per-image score of ``category`` from parsed detections."""
    if category == "spatial":
        obj1, obj2 = rules.simple_objects(item.tokens)
        return rules.spatial_2d_score(obj1, obj2, rules.find_relation(item.prompt, rules.VOCAB_SPATIAL_2D), item.detections)
    if category == "complex":  # the UniDet-2D input of 3-in-1
        obj1, obj2 = rules.complex_objects(item.tokens)
        return rules.spatial_2d_score(obj1, obj2, rules.find_relation(item.prompt, rules.VOCAB_SPATIAL_2D), item.detections)
    if category == "3d_spatial":
        obj1, obj2 = rules.simple_objects(item.tokens)
        try:
            return rules.spatial_3d_score(
                obj1, obj2, rules.find_relation(item.prompt, rules.VOCAB_SPATIAL_3D), item.detections
            )
        except ValueError as exc:
            raise HarnessError(f"{item.image}: {exc}; the detector must emit 'depth' for 3d_spatial") from None
    if category == "numeracy":
        if new_objects is None:
            raise HarnessError("numeracy scoring needs new_objects (singular, plural) lists from new_objects.txt")
        return rules.numeracy_score([t.text for t in item.tokens], item.detections, *new_objects)
    raise HarnessError(f"unknown detector category '{category}'; choose one of {', '.join(DETECTOR_CATEGORIES)}")


def run_json_command(command: Sequence[str], fill: dict[str, str], *, timeout_s: float, what: str, hint: str,
                     env: dict[str, str] | None = None) -> Any:
    """Run ``command`` (argv template; ``fill`` and ``{out}``, a temporary file, are substituted) and return the
    JSON it wrote to ``{out}``; HarnessError in one line when it is missing, fails, times out or writes no JSON.
    ``env`` adds variables to this process's environment."""
    with tempfile.TemporaryDirectory(prefix="lpo-bench-external-") as tmp:
        out = Path(tmp) / "out.json"
        argv = [a.format(**fill, out=str(out)) for a in command]
        full_env = None if env is None else {**os.environ, **env}
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, env=full_env, check=False)
        except FileNotFoundError:
            raise HarnessError(f"{what} not found: {argv[0]}; {hint}") from None
        except subprocess.TimeoutExpired:
            raise HarnessError(f"{what} timed out after {timeout_s:.0f} s: {' '.join(argv)}") from None
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
            raise HarnessError(f"{what} failed with exit code {proc.returncode}: {tail[0]}")
        try:
            return json.loads(out.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise HarnessError(f"{what} wrote no valid JSON to {{out}}: {exc}".splitlines()[0]) from None


class ExternalDetectorScorer:
    """Runs the T2I-CompBench UniDet/DPT detector command and scores its detections."""

    id: ClassVar[str] = "t2i-compbench.unidet"
    version: ClassVar[str] = "v1"
    higher_is_better: ClassVar[bool] = True

    def __init__(
        self,
        command: Sequence[str],
        *,
        new_objects: tuple[Sequence[str], Sequence[str]] | None = None,
        timeout_s: float = 6 * 3600,
        env: dict[str, str] | None = None,
    ) -> None:
        """``new_objects``: (singular, plural) lists for numeracy, e.g.
        ``parse_new_objects("\\n".join(load_compbench_aux("new_objects")))``."""
        if not command:
            raise HarnessError("ExternalDetectorScorer needs a detector command (argv list)")
        self.command = list(command)
        self.new_objects = new_objects
        self.timeout_s = timeout_s
        self.env = env
        self.detector_info: dict[str, Any] = {}

    def run_detector(self, image_dir: str | Path, category: str) -> list[ImageDetections]:
        """Run the command on ``image_dir`` and parse its JSON (HarnessError on failure or timeout)."""
        if category not in DETECTOR_CATEGORIES:
            raise HarnessError(f"unknown detector category '{category}'; choose one of {', '.join(DETECTOR_CATEGORIES)}")
        image_dir = Path(image_dir)
        if not image_dir.is_dir():
            raise HarnessError(f"image dir {image_dir} does not exist")
        data = run_json_command(self.command, {"image_dir": str(image_dir), "category": category},
                                timeout_s=self.timeout_s, env=self.env, what="detector command",
                                hint="set the detector command to its environment's python")
        self.detector_info = dict(data.get("detector", {})) if isinstance(data, dict) else {}
        return parse_detections(data, f"output of {self.command[0]}")

    def score_dir(self, image_dir: str | Path, category: str) -> list[ImageScore]:
        """One :class:`ImageScore` per image of ``image_dir``, in question-id order."""
        items = self.run_detector(image_dir, category)
        return [
            ImageScore(item.image, item.prompt, item.question_id, score_image(item, category, self.new_objects))
            for item in items
        ]
