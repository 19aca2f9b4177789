"""Lazy preference pairs (lpo_bench.data.stream): metadata-only opening, per-batch decoding, split names and layouts,
broken rows, DataLoader workers; and the synthetic Pick-a-Pic generator the memory benchmark uses."""

import io
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from lpo_bench.data.pairs import PairIndex, load_pairs, open_pairs
from lpo_bench.data.synthetic import write_synthetic_pickapic
from lpo_bench.errors import HarnessError

PICKAPIC_COLUMNS = {"are_different", "best_image_uid", "caption", "created_at", "has_label", "image_0_uid",
                    "image_0_url", "image_1_uid", "image_1_url", "jpg_0", "jpg_1", "label_0", "label_1", "model_0",
                    "model_1", "ranking_id", "user_id", "num_example_per_prompt"}


def _decode(data, res=None):
    img = Image.open(io.BytesIO(data)).convert("RGB")
    if res is not None:
        img = img.resize((res, res), Image.BILINEAR)
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).float() / 255.0


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """40 train pairs of 512 px JPEGs in shards of 16 rows and row groups of 5, with planted broken rows."""
    return write_synthetic_pickapic(tmp_path_factory.mktemp("pickapic"), n_train=40, n_validation=12, rows_per_shard=16,
                                    row_group_rows=5, pool_images=6, seed=3,
                                    corrupt={"null_image": 1, "bad_label": 1, "null_caption": 1, "undecodable": 2,
                                             "unlabeled": 1})


def _raw(d, split="train"):
    return pd.concat([pd.read_parquet(f) for f in sorted((d / "data").glob(f"{split}-*.parquet"))], ignore_index=True)


# ---------------------------------------------------------------------------- the synthetic dataset
def test_synthetic_pickapic_has_the_published_schema_and_layout(synthetic):
    shards = sorted(p.name for p in (synthetic / "data").glob("*.parquet"))
    assert shards == ["train-00000-of-00003.parquet", "train-00001-of-00003.parquet", "train-00002-of-00003.parquet",
                      "validation-00000-of-00001.parquet"]
    assert pq.ParquetFile(synthetic / "data" / shards[0]).metadata.num_row_groups == 4  # 16 rows, groups of 5
    df = _raw(synthetic, "validation")  # no planted corruption there
    assert set(df.columns) == PICKAPIC_COLUMNS
    assert set(df["label_0"]) <= {0.0, 0.5, 1.0} and (df["label_1"] == 1 - df["label_0"]).all()
    counts = df["caption"].map(df["caption"].value_counts())
    assert (df["num_example_per_prompt"] == counts).all()
    big = _raw(write_synthetic_pickapic(synthetic.parent / "repeats", n_train=300, n_validation=2, pool_images=2,
                                        image_size=16, seed=1))
    assert big["caption"].duplicated().any()  # repeated prompts, as in Pick-a-Pic
    assert (big["num_example_per_prompt"] == big["caption"].map(big["caption"].value_counts())).all()
    sizes = [len(b) for b in df["jpg_0"]]
    assert all(b[:2] == b"\xff\xd8" for b in df["jpg_0"])  # JPEG
    assert 60_000 < np.mean(sizes) < 200_000  # ~110 KB, like real 512 px generations
    assert Image.open(io.BytesIO(df["jpg_0"][0])).size == (512, 512)


# ---------------------------------------------------------------------------- same rows as the eager load
@pytest.mark.parametrize("split,drop_ties", [("train", False), ("train", True), ("val", True), ("test", False)])
def test_open_pairs_reads_the_rows_the_eager_load_reads(tiny_pairs, split, drop_ties):
    raw = pd.read_parquet(tiny_pairs / f"{split}.parquet")
    want = raw[raw["label_0"] != 0.5] if drop_ties else raw
    ix = open_pairs(tiny_pairs, split, drop_ties=drop_ties)
    assert ix.captions == want["caption"].tolist()
    np.testing.assert_array_equal(ix.label_0, want["label_0"].to_numpy())
    np.testing.assert_array_equal(ix.weight, 1.0 / want["num_example_per_prompt"].to_numpy())
    assert "jpg_0" not in ix.extra.columns and list(ix.extra["aesthetic_gap"]) == list(want["aesthetic_gap"])
    eager = load_pairs(tiny_pairs, split, drop_ties=drop_ties, resolution=16)
    assert eager.captions == ix.captions and eager.sha256 == ix.sha256 and eager.skipped == ix.skipped == 0
    np.testing.assert_array_equal(eager.weight, ix.weight)
    lazy = ix.images(np.arange(len(ix)), 1, resolution=16)
    assert torch.equal(lazy, eager.images_tensor(1))
    assert torch.equal(lazy[2], _decode(want["jpg_1"].iloc[2], 16))


def test_weights_fall_back_to_per_caption_counts(tmp_path):
    img = np.asarray(Image.new("RGB", (8, 8), (10, 200, 30)))
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    caps = ["a", "b", "a", "c", "a", "b"]
    pd.DataFrame({"caption": caps, "jpg_0": [buf.getvalue()] * 6, "jpg_1": [buf.getvalue()] * 6,
                  "label_0": [1.0, 0.0, 0.5, 1.0, 0.0, 1.0]}).to_parquet(tmp_path / "train.parquet")
    np.testing.assert_allclose(open_pairs(tmp_path, "train").weight, [1 / 3, 1 / 2, 1 / 3, 1, 1 / 3, 1 / 2])
    np.testing.assert_allclose(open_pairs(tmp_path, "train", drop_ties=True).weight, [1 / 2, 1 / 2, 1, 1 / 2, 1 / 2])


# ---------------------------------------------------------------------------- lazy: no image bytes in RAM
def test_the_index_holds_metadata_only(synthetic):
    ix = open_pairs(synthetic, "train", max_bad_frac=0.1)
    assert isinstance(ix, PairIndex)
    assert not set(ix.extra.columns) & {"jpg_0", "jpg_1"}
    assert not any(isinstance(v, (bytes, bytearray, memoryview, dict)) for c in ix.extra.columns for v in ix.extra[c])
    per_pair = ix.extra.memory_usage(deep=True).sum() / len(ix)
    image_bytes = sum(len(b) for b in _raw(synthetic, "validation")["jpg_0"]) / 12
    assert per_pair < 2000 < image_bytes  # a metadata row is ~0.5 KB; an image ~110 KB


def test_subset_keeps_rows_and_image_positions(synthetic):
    ix = open_pairs(synthetic, "train", max_bad_frac=0.1)
    sub = ix.subset([5, 2])
    assert sub.captions == [ix.captions[5], ix.captions[2]] and list(sub.label_0) == [ix.label_0[5], ix.label_0[2]]
    assert torch.equal(sub.images([0, 1], 0, resolution=32), ix.images([5, 2], 0, resolution=32))


# ---------------------------------------------------------------------------- broken rows
def test_broken_rows_are_counted_and_undecodable_pairs_left_out(synthetic):
    raw = _raw(synthetic)
    ix = open_pairs(synthetic, "train", max_bad_frac=0.1)
    assert ix.skipped == 3 and ix.unlabeled == 1 and len(ix) == 36  # null image, bad label, null caption; 1 unlabeled
    undecodable = set(raw.index[raw["jpg_0"].map(lambda b: b is not None and b[:3] == b"\xff\xd8 ")])
    assert len(undecodable) == 2
    raw_row = 16 * ix.shard.astype(np.int64) + ix.row  # shards of 16 rows
    bad_pos = [i for i in range(len(ix)) if int(raw_row[i]) in undecodable]
    assert len(bad_pos) == 2  # metadata cannot tell: they fail when decoded
    out = list(ix.batches(np.arange(len(ix)), batch_pairs=8, resolution=32))
    assert sorted(int(i) for b in out for i in b.failed) == bad_pos and ix.decode_failures == 2
    got = torch.cat([b.idx for b in out])
    assert got.tolist() == [i for i in range(len(ix)) if i not in bad_pos]
    for b in out[:2]:
        for k in (0, len(b.idx) - 1):
            assert torch.equal(b.images_1[k], _decode(raw["jpg_1"][int(raw_row[int(b.idx[k])])], 32))
    with pytest.raises(HarnessError, match="does not decode"):
        ix.images(bad_pos, 0, resolution=32)
    eager = load_pairs(synthetic, "train", max_bad_frac=0.2, resolution=8)
    assert len(eager) == 34 and eager.skipped == 5


def test_too_many_broken_rows_are_refused_in_one_line(synthetic):
    with pytest.raises(HarnessError) as e:
        open_pairs(synthetic, "train")  # 3 broken of 39 labelled rows: 7.7% > 5%
    assert "3 of 39 pairs" in str(e.value) and "threshold" in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------------------- workers
def test_workers_give_the_batches_of_the_main_process(synthetic):
    ix = open_pairs(synthetic, "train", max_bad_frac=0.1)
    order = np.random.default_rng(0).permutation(len(ix))
    inline = list(ix.batches(order, batch_pairs=7, resolution=24))
    workers = list(ix.batches(order, batch_pairs=7, resolution=24, num_workers=2))
    assert len(inline) == len(workers) == 6
    for a, b in zip(inline, workers, strict=True):
        assert torch.equal(a.idx, b.idx) and torch.equal(a.failed, b.failed)
        assert torch.equal(a.images_0, b.images_0) and torch.equal(a.images_1, b.images_1)
    failed = set(torch.cat([b.failed for b in inline]).tolist())
    assert torch.cat([b.idx for b in inline]).tolist() == [int(i) for i in order if i not in failed]  # order kept
    assert ix.decode_failures == 4  # both passes counted


# ---------------------------------------------------------------------------- split names and layouts
def test_val_and_validation_name_the_same_split(synthetic, tiny_pairs):
    a, b = open_pairs(synthetic, "val"), open_pairs(synthetic, "validation")
    assert len(a) == len(b) == 12 and a.captions == b.captions and a.sha256 == b.sha256
    assert open_pairs(tiny_pairs, "validation").captions == open_pairs(tiny_pairs, "val").captions
    with pytest.raises(HarnessError, match=r"no 'test_unique' split .*data/<split>-\*\.parquet"):
        open_pairs(synthetic, "test_unique")


def test_every_shard_layout_is_found(tiny_pairs, tmp_path):
    df = pd.read_parquet(tiny_pairs / "train.parquet")
    want = open_pairs(tiny_pairs, "train").captions
    layouts = {"dash": lambda d: [d / "train-00000-of-00002.parquet", d / "train-00001-of-00002.parquet"],
               "dir": lambda d: [d / "train" / "part-0.parquet", d / "train" / "part-1.parquet"]}
    for name, files in layouts.items():
        paths = files(tmp_path / name)
        paths[0].parent.mkdir(parents=True, exist_ok=True)
        half = len(df) // 2
        df.iloc[:half].to_parquet(paths[0])
        df.iloc[half:].to_parquet(paths[1])
        assert open_pairs(tmp_path / name, "train").captions == want, name


def test_a_datasets_save_to_disk_copy_is_read_memory_mapped(tiny_pairs, tmp_path):
    """The layout of ``DatasetDict.save_to_disk``: <split>/data-XXXXX-of-YYYYY.arrow (Arrow IPC streams)."""
    table = pa.Table.from_pandas(pd.read_parquet(tiny_pairs / "train.parquet"), preserve_index=False)
    d = tmp_path / "hf" / "train"
    d.mkdir(parents=True)
    for k, part in enumerate((table.slice(0, 10), table.slice(10))):
        with pa.OSFile(str(d / f"data-{k:05d}-of-00002.arrow"), "wb") as sink, pa.ipc.new_stream(sink, part.schema) as w:
            w.write_table(part)
    (d / "dataset_info.json").write_text(json.dumps({"features": {}}))
    (tmp_path / "hf" / "dataset_dict.json").write_text(json.dumps({"splits": ["train"]}))
    ix, want = open_pairs(tmp_path / "hf", "train", drop_ties=True), open_pairs(tiny_pairs, "train", drop_ties=True)
    assert ix.captions == want.captions and np.array_equal(ix.weight, want.weight)
    sel = np.array([len(ix) - 1, 0, 3])
    assert torch.equal(ix.images(sel, 0, resolution=None), want.images(sel, 0, resolution=None))
