"""GenEval with its detector out of process: Mask2Former detections read from disk, GenEval's rules
(:mod:`lpo_bench.metrics.geneval_rules`) and its CLIP colour classifier in process.

GenEval's published ``evaluate_images.py`` (djghosh13/geneval@af4902f) asserts CUDA and needs mmdet 2.x with
mmcv-full built for the local GPU, which conflicts with this environment. So only the detector runs in
GenEval's own pinned environment (``nox -s geneval-env``), through the adapter script
:mod:`lpo_bench.metrics.geneval_detect`; its command line comes from ``$LPO_BENCH_GENEVAL_DETECTOR`` (shell
syntax; ``{image_dir}`` and ``{out}`` are filled in) and writes ``lpo-bench-geneval-detections/v1`` JSON:
per image its size and, per kept detection, class, box ``[x1, y1, x2, y2]``, score and the instance mask inside
the box. The adapter keeps detections above 0.3, at most 16 per class; the rules here apply the per-tag
thresholds.

Colour: GenEval's zero-shot classifier: OpenAI CLIP ViT-L/14, the class embedding of colour ``c`` is the
normalised mean of the normalised text embeddings of :data:`geneval_rules.COLOR_TEMPLATES`; each judged
object's crop (:func:`geneval_rules.color_crop`) gets the colour of highest cosine. The weights are the
``clipscore`` checkpoint (``openai/clip-vit-large-patch14``, the same weights GenEval loads through open_clip).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from lpo_bench.errors import HarnessError
from lpo_bench.metrics import geneval_rules as R
from lpo_bench.metrics.compbench_rules import parse_image_file_name
from lpo_bench.metrics.external import ImageScore, document_images, run_json_command

DETECTIONS_FORMAT = "lpo-bench-geneval-detections/v1"
GENEVAL_DETECTOR_ENV = "LPO_BENCH_GENEVAL_DETECTOR"


@dataclass(frozen=True)
class ImageDetections:
    """One image's detections from the adapter, grouped by class (detector order within a class)."""

    image: str
    width: int
    height: int
    by_class: dict[str, list[R.Detection]]


def parse_detections(data: Any, source: str = "detector output") -> list[ImageDetections]:
    """Validate and parse a ``lpo-bench-geneval-detections/v1`` document (HarnessError naming the problem)."""
    out = []
    for entry in document_images(data, DETECTIONS_FORMAT, source):
        try:
            name, w, h = str(entry["image"]), int(entry["width"]), int(entry["height"])
            by_class: dict[str, list[R.Detection]] = {}
            for d in entry["detections"]:
                box = tuple(float(v) for v in d["box"])
                if len(box) != 4:
                    raise ValueError("box needs 4 numbers")
                by_class.setdefault(str(d["class"]), []).append(R.Detection(box, float(d["score"]), mask=d.get("mask")))
        except (KeyError, TypeError, ValueError) as exc:
            raise HarnessError(f"bad image entry in {source}: {exc!r}; expected {{image, width, height, detections: "
                               f"[{{class, box[4], score, mask}}]}}") from None
        out.append(ImageDetections(name, w, h, by_class))
    return out


class ClipColorClassifier:
    """GenEval's zero-shot colour classifier over :data:`geneval_rules.COLORS` (see the module docstring)."""

    def __init__(self, clip: Any) -> None:
        self.clip = clip  # lpo_bench.metrics._hf_clip.HFClip
        self._weights: dict[str, Any] = {}

    def class_weights(self, classname: str) -> Any:
        """[d, 10] colour embeddings for ``classname`` (cached)."""
        import torch

        if classname not in self._weights:
            cols = []
            for c in R.COLORS:
                emb = self.clip.text_embeds([t.format(c=c, classname=classname) for t in R.COLOR_TEMPLATES])
                cols.append(torch.nn.functional.normalize(emb.mean(0), dim=-1))
            self._weights[classname] = torch.stack(cols, dim=1)
        return self._weights[classname]

    def __call__(self, classname: str, crops: Sequence[Any]) -> list[str]:
        """One colour per crop (uint8 [h, w, 3] arrays)."""
        import torch
        from PIL import Image

        if not crops:
            return []
        with torch.inference_mode():
            emb = self.clip.pil_embeds([Image.fromarray(c) for c in crops])
            idx = (emb @ self.class_weights(classname).to(emb)).argmax(dim=1)
        return [R.COLORS[int(i)] for i in idx]


class GenEvalScorer:
    """Runs the detector command on a folder of images, then scores each image with GenEval's rules.

    ``metadata``: GenEval's rows by tag, in file order (``load_geneval_metadata``); images are matched to
    their row by tag and prompt text (file names ``<prompt>_<NNNNNN>.png``). ``colors``: a callable
    ``(classname, crops) -> colours`` (:class:`ClipColorClassifier`), or None to refuse colour clauses.
    """

    id: ClassVar[str] = "geneval"
    version: ClassVar[str] = "v1"
    higher_is_better: ClassVar[bool] = True

    def __init__(self, command: Sequence[str], metadata: Sequence[dict[str, Any]], *, colors: Any = None,
                 colors_ref: str = "", timeout_s: float = 6 * 3600) -> None:
        if not command:
            raise HarnessError(f"the GenEval detector needs a command (set {GENEVAL_DETECTOR_ENV})")
        self.command = list(command)
        self.colors = colors
        self.colors_ref = colors_ref
        self.timeout_s = timeout_s
        self.detector_info: dict[str, Any] = {}
        self.by_prompt: dict[tuple[str, str], R.PromptMetadata] = {}
        for row in metadata:
            try:
                md = R.PromptMetadata.from_json(row)
            except (KeyError, TypeError, ValueError) as exc:
                raise HarnessError(f"bad GenEval metadata row {row.get('prompt')!r}: {exc}") from None
            self.by_prompt[(md.tag, md.prompt)] = md

    def run_detector(self, image_dir: Path) -> list[ImageDetections]:
        data = run_json_command(self.command, {"image_dir": str(image_dir)}, timeout_s=self.timeout_s,
                                what="GenEval detector",
                                hint=f"set {GENEVAL_DETECTOR_ENV} to the command `nox -s geneval-env` prints")
        self.detector_info = dict(data.get("detector", {})) if isinstance(data, dict) else {}
        self.detector_info["color_classifier"] = self.colors_ref
        return parse_detections(data, f"output of {self.command[0]}")

    def score_image(self, item: ImageDetections, image_dir: Path, tag: str) -> tuple[bool, str]:
        """(correct, reason) of one image; its metadata is found by ``tag`` and the prompt in its file name."""
        prompt, _ = parse_image_file_name(item.image)
        md = self.by_prompt.get((tag, prompt))
        if md is None:
            raise HarnessError(f"{item.image}: no GenEval prompt '{prompt}' with tag {tag}; score images written by "
                               f"`lpo-bench eval --suite geneval`")
        return R.score_image(item.by_class, md, self._classifier(item, image_dir))

    def _classifier(self, item: ImageDetections, image_dir: Path) -> R.ColorFn:
        loaded: list[Any] = []  # the image, read at the first colour clause and kept for the next (color_attr has two)

        def classify(classname: str, objs: Sequence[R.Detection]) -> list[str]:
            import numpy as np
            from PIL import Image

            from lpo_bench.metrics.geneval_detect import decode_mask

            if self.colors is None:
                raise HarnessError("GenEval colour clauses need the CLIP colour classifier; it was not loaded")
            if not loaded:
                loaded.append(np.asarray(Image.open(image_dir / item.image).convert("RGB")))
            crops = [R.color_crop(loaded[0], d.box, decode_mask(d.mask, item.height, item.width)) for d in objs]
            return self.colors(classname, crops)

        return classify

    def score_dir(self, image_dir: str | Path, category: str) -> list[ImageScore]:
        """One :class:`ImageScore` (100 correct, 0 not) per image of ``image_dir`` (images of tag ``category``)."""
        image_dir = Path(image_dir)
        if category not in R.TAGS:
            raise HarnessError(f"unknown GenEval tag '{category}'; choose one of {', '.join(R.TAGS)}")
        rows = []
        for item in self.run_detector(image_dir):
            correct, _ = self.score_image(item, image_dir, category)
            prompt, qid = parse_image_file_name(item.image)
            rows.append(ImageScore(item.image, prompt, qid, 100.0 * float(correct)))
        return sorted(rows, key=lambda r: r.question_id)


def external_geneval_scorer(*, data_dir: str | Path | None, weights_dir: str | Path | None = None,
                            device: str = "cpu") -> tuple[GenEvalScorer | None, str]:
    """(scorer, "") when ``$LPO_BENCH_GENEVAL_DETECTOR`` is set (CLIP ViT-L/14 loaded for colours), else
    (None, why)."""
    import shlex

    command = os.environ.get(GENEVAL_DETECTOR_ENV, "").strip()
    if not command:
        return None, (f"GenEval's Mask2Former detector is not configured: build its environment with "
                      f"`nox -s geneval-env` and set {GENEVAL_DETECTOR_ENV} to the command it prints")
    from lpo_bench.data.datasets import load_geneval_metadata
    from lpo_bench.metrics._hf_clip import HFClip
    from lpo_bench.metrics.clipscore import OPENAI_CLIP_L14
    from lpo_bench.models.weights import download_allowed

    clip_dir = OPENAI_CLIP_L14.resolve(weights_dir, download_allowed())
    clip = HFClip(clip_dir, clip_dir, device=device, source=OPENAI_CLIP_L14.ref)
    return GenEvalScorer(shlex.split(command), load_geneval_metadata(data_dir=data_dir),
                         colors=ClipColorClassifier(clip), colors_ref=OPENAI_CLIP_L14.ref), ""
