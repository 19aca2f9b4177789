"""The standalone GenEval detector script: pure helpers, CLI errors, and a run against a stub mmdet."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "lpo_bench" / "metrics" / "geneval_detect.py"


def _load():
    spec = importlib.util.spec_from_file_location("geneval_detect_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


D = _load()


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=120)


# ---------------------------------------------------------------------------- select_rows
def test_select_rows_orders_by_score_descending():
    assert D.select_rows(np.array([0.5, 0.9, 0.7], dtype=np.float32), 0.3, 16) == [1, 2, 0]


def test_select_rows_threshold_is_strictly_greater():
    scores = np.array([0.3, 0.31, 0.2, 0.9], dtype=np.float64)
    assert D.select_rows(scores, 0.3, 16) == [3, 1]
    assert D.select_rows(scores, 0.9, 16) == []


def test_select_rows_caps_per_class_and_handles_empty():
    scores = np.linspace(0.4, 0.99, 20)
    rows = D.select_rows(scores, 0.3, 16)
    assert rows == list(range(19, 3, -1))
    assert D.select_rows(scores, 0.3, 0) == []
    assert D.select_rows(np.zeros((0,), dtype=np.float32), 0.3, 16) == []
    assert all(type(r) is int for r in rows)


# ---------------------------------------------------------------------------- masks
def _random_mask(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((h, w)) > 0.5


def test_encode_decode_round_trip_inside_box():
    mask = _random_mask(20, 30)
    box = [3.0, 4.0, 17.0, 12.0]
    entry = D.encode_mask(mask, box)
    assert entry["origin"] == [3, 4] and entry["size"] == [14, 8]
    json.dumps(entry)  # plain JSON types
    out = D.decode_mask(entry, 20, 30)
    assert out.dtype == bool and out.shape == (20, 30)
    np.testing.assert_array_equal(out[4:12, 3:17], mask[4:12, 3:17])
    assert not out[:4].any() and not out[12:].any() and not out[:, :3].any() and not out[:, 17:].any()


def test_box_rounds_like_pillow_crop():
    # Python's round() is half-to-even: 2.5 -> 2, 3.5 -> 4, 10.5 -> 10, 12.5 -> 12.
    mask = _random_mask(16, 16, seed=1)
    box = [2.5, 3.5, 10.5, 12.5]
    entry = D.encode_mask(mask, box)
    assert entry["origin"] == [2, 4] and entry["size"] == [8, 8]
    crop = np.asarray(Image.fromarray(mask).crop(tuple(box)))
    assert crop.shape == (8, 8)
    np.testing.assert_array_equal(D.decode_mask(entry, 16, 16)[4:12, 2:10], crop)


def test_box_partly_outside_the_image_is_clamped():
    mask = _random_mask(10, 12, seed=2)
    box = np.array([-3.2, 6.4, 15.0, 14.0], dtype=np.float32)  # rounds to (-3, 6, 15, 14)
    entry = D.encode_mask(mask, box)
    assert entry["origin"] == [0, 6] and entry["size"] == [12, 4]
    out = D.decode_mask(entry, 10, 12)
    np.testing.assert_array_equal(out[6:], mask[6:])
    assert not out[:6].any()
    # What Pillow's crop sees inside the image (it pads outside with zeros) is exactly the stored region.
    crop = np.asarray(Image.fromarray(mask).crop(tuple(float(v) for v in box)))
    np.testing.assert_array_equal(crop[:4, 3:15], mask[6:10, :])
    assert not crop[:, :3].any() and not crop[4:].any()


def test_box_fully_outside_or_degenerate_is_empty():
    mask = np.ones((8, 8), dtype=bool)
    for box in ([20.0, 20.0, 30.0, 30.0], [-9.0, -9.0, -1.0, -1.0], [4.0, 4.0, 4.2, 7.0]):
        entry = D.encode_mask(mask, box)
        assert entry["size"] == [0, 0] and entry["bits"] == ""
        assert not D.decode_mask(entry, 8, 8).any()
    assert D.encode_mask(None, [0, 0, 1, 1]) is None and D.decode_mask(None, 8, 8) is None


# ---------------------------------------------------------------------------- CLI
def test_help_runs_without_mmdet():
    proc = _run("--help")
    assert proc.returncode == 0, proc.stderr
    assert "--images" in proc.stdout and "--max-objects" in proc.stdout


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_missing_images_dir_exits_2_before_importing_mmdet(tmp_path):
    line = _one_line_error(_run("--images", str(tmp_path / "nope"), "--out", str(tmp_path / "o.json"),
                                "--model-path", str(tmp_path)))
    assert "nope" in line and "not a directory" in line


def test_no_pngs_and_missing_checkpoint_exit_2(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.jpg").write_bytes(b"")
    line = _one_line_error(_run("--images", str(images), "--out", str(tmp_path / "o.json"),
                                "--model-path", str(tmp_path)))
    assert "no *.png" in line
    Image.new("RGB", (8, 8)).save(images / "0000.png")
    line = _one_line_error(_run("--images", str(images), "--out", str(tmp_path / "o.json"),
                                "--model-path", str(tmp_path / "ckpt")))
    assert D.CHECKPOINT_URL in line and "743b7d99" in D.CHECKPOINT_URL


def test_missing_mmdet_or_config_exit_2(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (8, 8)).save(images / "0000.png")
    (tmp_path / f"{D.MODEL}.pth").write_bytes(b"")
    args = ("--images", str(images), "--out", str(tmp_path / "o.json"), "--model-path", str(tmp_path))
    assert "mmdet is not importable" in _one_line_error(_run(*args))
    site = tmp_path / "site"
    (site / "mmdet").mkdir(parents=True)
    (site / "mmdet" / "__init__.py").write_text("")
    line = _one_line_error(_run(*args, env={**os.environ, "PYTHONPATH": str(site)}))
    assert os.path.join("configs", "mask2former") in line and ".mim" in line and "--model-config" in line


# ---------------------------------------------------------------------------- end to end, stub mmdet
_STUB_APIS = textwrap.dedent('''
    import numpy as np
    from mmdet.core import COCO

    class Model:
        CLASSES = COCO

    def init_detector(config, checkpoint, device):
        assert config.endswith("mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.py"), config
        return Model()

    def inference_detector(model, path):
        bbox = [np.zeros((0, 5), dtype=np.float32) for _ in range(80)]
        segm = [[] for _ in range(80)]
        bbox[0] = np.array([[1, 1, 5, 6, 0.4], [0, 0, 9, 9, 0.95], [2, 2, 3, 3, 0.3]], dtype=np.float32)
        masks = [np.zeros((10, 12), dtype=bool) for _ in range(3)]
        masks[1][2:4, 1:3] = True
        segm[0] = masks
        bbox[64] = np.array([[2.5, 0, 14, 4, 0.8]], dtype=np.float32)  # "mouse"
        segm[64] = [np.ones((10, 12), dtype=bool)]
        return bbox, segm
''')

_COCO = ["person"] + [f"c{i}" for i in range(1, 80)]
_COCO[64] = "mouse"


def _stub_mmdet(root: Path) -> None:
    pkg = root / "mmdet"
    (pkg / ".mim" / "configs" / "mask2former").mkdir(parents=True)
    (pkg / ".mim" / "configs" / "mask2former" / f"{D.MODEL}.py").write_text("# stub\n")
    (pkg / "__init__.py").write_text("__version__ = '2.28.2-stub'\n")
    (pkg / "core.py").write_text(f"COCO = {tuple(_COCO)!r}\n")
    (pkg / "apis.py").write_text(_STUB_APIS)
    (root / "mmcv").mkdir()
    (root / "mmcv" / "__init__.py").write_text("__version__ = '1.7.1-stub'\n")


def test_end_to_end_with_stub_detector(tmp_path):
    _stub_mmdet(tmp_path / "site")
    images = tmp_path / "images"
    images.mkdir()
    for name in ("0001.png", "0000.png"):
        Image.new("RGB", (12, 10)).save(images / name)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / f"{D.MODEL}.pth").write_bytes(b"weights")
    out = tmp_path / "sub" / "det.json"
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    proc = _run("--images", str(images), "--out", str(out), "--model-path", str(ckpt), "--device", "cpu", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "CPU" in proc.stderr
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["format"] == "lpo-bench-geneval-detections/v1"
    det = data["detector"]
    assert det["mmdet"] == "2.28.2-stub" and det["mmcv"] == "1.7.1-stub" and det["device"] == "cpu"
    assert det["checkpoint_sha256"] == hashlib.sha256(b"weights").hexdigest()
    assert det["config"].endswith(os.path.join(".mim", "configs", "mask2former", f"{D.MODEL}.py"))
    assert (det["min_score"], det["max_objects"]) == (0.3, 16)
    assert len(data["classes"]) == 80 and data["classes"][64] == "computer mouse"
    assert [im["image"] for im in data["images"]] == ["0000.png", "0001.png"]
    first = data["images"][0]
    assert (first["width"], first["height"]) == (12, 10)
    dets = first["detections"]
    assert [(d["class"], round(d["score"], 2)) for d in dets] == [("person", 0.95), ("person", 0.4),
                                                                     ("computer mouse", 0.8)]
    assert dets[0]["box"] == [0.0, 0.0, 9.0, 9.0]
    person = D.decode_mask(dets[0]["mask"], 10, 12)
    assert person.sum() == 4 and person[2:4, 1:3].all()
    mouse = dets[2]["mask"]
    assert mouse["origin"] == [2, 0] and mouse["size"] == [10, 4]
    assert not list(out.parent.glob(".geneval-detect-*"))  # no temp file left behind
