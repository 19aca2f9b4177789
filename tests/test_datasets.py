"""Pinned prompt files: lookup order, sha256 verification, robust reading, opt-in download."""

from __future__ import annotations

import hashlib
import io
import shutil
from pathlib import Path

import pytest

from lpo_bench.data import datasets as D
from lpo_bench.errors import HarnessError

# The shared data sits beside the repository checkout; tests that need it skip when it is absent.
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
COMPBENCH_DIR = SHARED / "t2i-compbench"
LPO_DIR = SHARED / "lpo"
needs_compbench = pytest.mark.skipif(not COMPBENCH_DIR.is_dir(), reason="shared T2I-CompBench files absent")
needs_lpo = pytest.mark.skipif(not LPO_DIR.is_dir(), reason="shared LPO prompt file absent")


def test_pins_and_url_pattern():
    assert set(D.PROMPT_FILES) == set(D.COMPBENCH_CATEGORIES)
    color = D.PROMPT_FILES["color"]
    assert color.commit == D.T2I_COMPBENCH_COMMIT and len(color.commit) == 40
    assert color.url == (
        "https://raw.githubusercontent.com/Karine-Huang/T2I-CompBench/"
        "1b7094991a57f3c22abdd4f6e8ba6c1a15517073/examples/dataset/color_val.txt"
    )
    head = D.PinnedFile("o/r", "c" * 40, "evaluation/sac+logos.pth", "0" * 64, 1)
    assert head.url.endswith("/evaluation/sac%2Blogos.pth")


@needs_compbench
@pytest.mark.parametrize("category", D.COMPBENCH_CATEGORIES)
def test_load_val_prompts_from_data_dir(category):
    prompts = D.load_prompt_file(category, data_dir=COMPBENCH_DIR)
    assert len(prompts) == 300
    assert all(p == p.strip() and "\r" not in p and "_" not in p for p in prompts)


@needs_compbench
def test_aux_files_and_cache_lookup(tmp_path, monkeypatch):
    assert len(D.load_compbench_aux("new_objects", data_dir=COMPBENCH_DIR)) == 101
    split = sum(len(D.load_compbench_aux(n, data_dir=COMPBENCH_DIR)) for n in ("complex_spatial", "complex_action", "complex_spatialaction"))
    assert split == 300
    # without data_dir the file is read from the cache ($LPO_BENCH_CACHE set per test by conftest)
    pf = D.PROMPT_FILES["spatial"]
    cached = D._cache_path(pf)
    cached.parent.mkdir(parents=True)
    shutil.copy(COMPBENCH_DIR / pf.name, cached)
    assert D.load_prompt_file("spatial") == D.load_prompt_file("spatial", data_dir=COMPBENCH_DIR)


def test_sha_mismatch_names_pinned_version(tmp_path):
    (tmp_path / "color_val.txt").write_text("a red dog\n", encoding="utf-8")
    with pytest.raises(HarnessError, match=r"not the pinned Karine-Huang/T2I-CompBench@1b70949 .*color_val.txt"):
        D.load_prompt_file("color", data_dir=tmp_path)


def test_missing_file_and_unknown_category(tmp_path):
    with pytest.raises(HarnessError, match="not found in data dir"):
        D.load_prompt_file("color", data_dir=tmp_path)
    # no data_dir, empty cache, downloads disabled (HF_HUB_OFFLINE=1 in conftest)
    with pytest.raises(HarnessError, match=r"--data-dir .*--download"):
        D.load_prompt_file("color")
    with pytest.raises(HarnessError, match="unknown T2I-CompBench category"):
        D.load_prompt_file("colour", data_dir=tmp_path)


def test_read_text_lines_bom_crlf_blank(tmp_path):
    path = tmp_path / "p.txt"
    path.write_bytes("\ufeffa café\r\n\r\n  \nsecond prompt\rthird".encode())
    assert D.read_text_lines(path) == ["a café", "second prompt", "third"]
    path.write_bytes(b"caf\xe9\n")
    with pytest.raises(HarnessError, match="not valid UTF-8"):
        D.read_text_lines(path)
    path.write_bytes(b"\n \r\n")
    with pytest.raises(HarnessError, match="no prompts"):
        D.read_text_lines(path)


class _FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _fake_remote(monkeypatch, content: bytes, seen: list[str]):
    def urlopen(url, timeout):
        seen.append(url)
        assert timeout == D.DOWNLOAD_TIMEOUT_S
        return _FakeResponse(content)

    monkeypatch.setattr(D.urllib.request, "urlopen", urlopen)


def test_opt_in_download_verifies_and_caches(monkeypatch):
    content = b"a dog\nthree cats\n"
    pf = D.PinnedFile("o/r", "c" * 40, "p/x.txt", hashlib.sha256(content).hexdigest(), len(content))
    seen: list[str] = []
    _fake_remote(monkeypatch, content, seen)
    with pytest.raises(HarnessError, match="not available locally"):  # HF_HUB_OFFLINE=1 wins over allow_download
        D.resolve_pinned_file(pf, allow_download=True)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert D.read_text_lines(D.resolve_pinned_file(pf, allow_download=True)) == ["a dog", "three cats"]
    assert seen == [pf.url]
    D.resolve_pinned_file(pf, allow_download=True)  # second call: from the cache
    assert len(seen) == 1


def test_download_with_wrong_content_is_rejected(monkeypatch):
    pf = D.PinnedFile("o/r", "c" * 40, "p/y.txt", "0" * 64, 10)
    _fake_remote(monkeypatch, b"tampered\n", [])
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(HarnessError, match="not the pinned o/r@ccccccc p/y.txt"):
        D.resolve_pinned_file(pf, allow_download=True)
    assert not D._cache_path(pf).exists()


@needs_lpo
def test_lpo_train_prompts():
    prompts = D.load_train_prompts_4k(data_dir=LPO_DIR)
    assert len(prompts) == 4000
    assert prompts[0] == "a cat driving a nuke"
