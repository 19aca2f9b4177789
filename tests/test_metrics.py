"""Metric adapters on tiny random-weight models of the real classes, laid out like the real hub repos.

Each adapter is loaded through ``weights_dir`` and its scores are compared with the formula
computed here independently (the library's own forward pass on hand-built inputs).
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import pytest
import torch

from lpo_bench.errors import HarnessError
from lpo_bench.metrics import compbench_rules as R
from lpo_bench.models.tiny import clip_tokenizer_dir

MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
PROMPTS = ["a red dog", "a photo of a blue car and a green cat", "a dog"]
# Data shared between checkouts lives next to the repository root (../shared).
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SHARED_HEAD = SHARED_DATA / "aesthetic" / "sac+logos+ava1-l14-linearMSE.pth"


def _images(n: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _normalised_8bit(images: torch.Tensor) -> torch.Tensor:
    return ((images * 255).round() / 255 - MEAN) / STD


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """All parameters (LayerNorms too) random, so a wrong mapping cannot go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


# ---------------------------------------------------------------------------- transformers CLIP
def _tiny_hf_clip(seed: int, projection_dim: int = 16):
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=projection_dim,
    )
    torch.manual_seed(seed)
    return CLIPModel(cfg).eval()


def _write_clip_processor(d: Path, size: int = 32) -> None:
    from transformers import CLIPImageProcessor, CLIPTokenizer

    CLIPTokenizer.from_pretrained(clip_tokenizer_dir()).save_pretrained(d)
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(d)


def _clip_logits(model, images, prompts) -> torch.Tensor:
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(clip_tokenizer_dir())(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"], pixel_values=_normalised_8bit(images))
    return out.logits_per_image.diagonal()


def test_pickscore_is_scaled_clip_similarity(tmp_path):
    from lpo_bench.metrics.pickscore import PickScore

    model = _tiny_hf_clip(seed=1)
    model.save_pretrained(tmp_path / "yuvalkirstain" / "PickScore_v1")
    _write_clip_processor(tmp_path / "laion" / "CLIP-ViT-H-14-laion2B-s32B-b79K")
    scorer = PickScore(weights_dir=tmp_path, batch_size=2)
    prov = scorer.load()
    assert prov.checkpoint == (
        "yuvalkirstain/PickScore_v1@a4e4367c6dfa7288a00c550414478f865b875800"
        "+laion/CLIP-ViT-H-14-laion2B-s32B-b79K@1c2b8495b28150b8a4922ee1c8edee224c284c0c"
    )
    assert prov.sha256.startswith("model.safetensors=") and len(prov.sha256) == len("model.safetensors=") + 64
    images = _images()
    scores = scorer.score(images, PROMPTS)
    assert scores.dtype == torch.float32 and scores.shape == (3,)
    torch.testing.assert_close(scores, _clip_logits(model, images, PROMPTS), rtol=1e-4, atol=1e-4)
    scorer.batch_size = 1
    torch.testing.assert_close(scorer.score(images, PROMPTS), scores)


def test_clipscore_is_raw_cosine(tmp_path):
    from lpo_bench.metrics.clipscore import CLIPScore

    model = _tiny_hf_clip(seed=2)
    repo = tmp_path / "openai" / "clip-vit-large-patch14"
    model.save_pretrained(repo)
    _write_clip_processor(repo)
    scorer = CLIPScore(weights_dir=tmp_path)
    assert scorer.load().checkpoint == "openai/clip-vit-large-patch14@32bd64288804d66eefd0ccbe215aa642df71cc41"
    images = _images(seed=3)
    scores = scorer.score(images, PROMPTS)
    expected = _clip_logits(model, images, PROMPTS) / model.logit_scale.exp().item()
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-5)
    assert scores.abs().max() <= 1.0


# ---------------------------------------------------------------------------- aesthetic
@pytest.mark.skipif(not SHARED_HEAD.is_file(), reason="shared aesthetic head absent")
def test_real_aesthetic_head_loads_strictly():
    from lpo_bench.metrics.aesthetic import AESTHETIC_HEAD, AestheticHead, load_head

    head = load_head(SHARED_HEAD)
    state = torch.load(SHARED_HEAD, map_location="cpu", weights_only=True)
    assert set(state) == set(AestheticHead().state_dict())
    assert sum(p.numel() for p in head.parameters()) == 768 * 1024 + 1024 + 1024 * 128 + 128 + 128 * 64 + 64 + 64 * 16 + 16 + 16 + 1
    from lpo_bench.models.weights import file_sha256

    assert file_sha256(SHARED_HEAD) == AESTHETIC_HEAD.sha256


def test_aesthetic_head_layout_is_checked(tmp_path):
    from lpo_bench.metrics.aesthetic import AestheticHead, load_head

    state = AestheticHead().state_dict()
    state["layers.8.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(HarnessError, match="unexpected layers.8.weight"):
        load_head(tmp_path / "bad.pth")


def test_aesthetic_scores_normalised_embedding(tmp_path):
    from lpo_bench.metrics.aesthetic import AESTHETIC_HEAD, AestheticHead, LaionAesthetic

    model = _tiny_hf_clip(seed=4, projection_dim=768)
    repo = tmp_path / "openai" / "clip-vit-large-patch14"
    model.save_pretrained(repo)
    _write_clip_processor(repo)
    torch.manual_seed(5)
    head = AestheticHead().eval()
    torch.save(head.state_dict(), tmp_path / "head.pth")
    scorer = LaionAesthetic(weights_dir=tmp_path, head_path=tmp_path / "head.pth")
    prov = scorer.load()
    assert str(tmp_path / "head.pth") in prov.checkpoint and AESTHETIC_HEAD.name in prov.sha256
    images = _images(seed=6)
    with torch.no_grad():
        emb = model.get_image_features(pixel_values=_normalised_8bit(images))
        emb = emb if isinstance(emb, torch.Tensor) else emb.pooler_output
        expected = head.layers(emb / emb.norm(dim=-1, keepdim=True)).squeeze(-1)
    torch.testing.assert_close(scorer.score(images, PROMPTS), expected, rtol=1e-4, atol=1e-4)
    # default head lookup in weights_dir verifies the pinned sha256
    (tmp_path / AESTHETIC_HEAD.name).write_bytes((tmp_path / "head.pth").read_bytes())
    with pytest.raises(HarnessError, match="not the pinned Kwai-Kolors/LPO"):
        LaionAesthetic(weights_dir=tmp_path).load()
    unpinned = LaionAesthetic(weights_dir=tmp_path, verify_sha256=False).load()
    assert unpinned.checkpoint.endswith("+" + str(tmp_path / AESTHETIC_HEAD.name))


# ---------------------------------------------------------------------------- HPS (open_clip)
TINY_OPEN_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def _hps_checkpoint(path: Path, seed: int):
    from open_clip.model import CLIP

    torch.manual_seed(seed)
    model = CLIP(**TINY_OPEN_CLIP).eval()
    state = {k: v.half() for k, v in model.state_dict().items()}  # the compressed files are fp16
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state}, path)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model


@pytest.mark.parametrize("version", ["hpsv2.0", "hpsv2.1"])
def test_hps_is_100_cosine_of_strictly_loaded_checkpoint(tmp_path, version):
    import open_clip

    from lpo_bench.metrics.hpsv2 import HPSv20, HPSv21

    cls = {"hpsv2.0": HPSv20, "hpsv2.1": HPSv21}[version]
    filename = cls.checkpoint.files[0]
    model = _hps_checkpoint(tmp_path / "xswu" / "HPSv2" / filename, seed=7)
    with pytest.raises(HarnessError, match="not the pinned xswu/HPSv2@697403c"):
        cls(weights_dir=tmp_path, model_cfg=TINY_OPEN_CLIP).load()
    scorer = cls(weights_dir=tmp_path, model_cfg=TINY_OPEN_CLIP, verify_sha256=False, batch_size=2)
    prov = scorer.load()
    assert prov.metric_id == version and "not the pinned" in prov.checkpoint
    images = _images(seed=8)
    with torch.no_grad():
        img = model.encode_image(_normalised_8bit(images), normalize=True)
        txt = model.encode_text(open_clip.tokenize(PROMPTS), normalize=True)
    torch.testing.assert_close(scorer.score(images, PROMPTS), 100 * (img * txt).sum(-1), rtol=1e-4, atol=1e-3)


def test_hps_rejects_checkpoint_of_other_architecture(tmp_path):
    from lpo_bench.metrics.hpsv2 import HPSv21

    _hps_checkpoint(tmp_path / "xswu" / "HPSv2" / "HPS_v2.1_compressed.pt", seed=0)
    other = json.loads(json.dumps(TINY_OPEN_CLIP))
    other["vision_cfg"]["layers"] = 3
    with pytest.raises(HarnessError, match="missing visual.transformer.resblocks.2"):
        HPSv21(weights_dir=tmp_path, model_cfg=other, verify_sha256=False).load()


def test_hps_preprocess_resizes_longest_side_and_pads():
    from lpo_bench.metrics.hpsv2 import hps_preprocess

    pad = ((0 - MEAN) / STD).view(3)
    inside = ((128 / 255 - MEAN) / STD).view(3)
    wide = hps_preprocess(torch.full((1, 3, 4, 8), 0.5), size=4)  # -> 2x4 content, 1 row of padding above and below
    assert wide.shape == (1, 3, 4, 4)
    torch.testing.assert_close(wide[0, :, 0, 0], pad)
    torch.testing.assert_close(wide[0, :, 3, 0], pad)
    torch.testing.assert_close(wide[0, :, 1:3, :].mean(dim=(1, 2)), inside, atol=1e-4, rtol=0)
    flat = hps_preprocess(torch.full((1, 3, 2, 8), 0.5), size=4)  # -> 1x4 content; the extra pad row goes below
    torch.testing.assert_close(flat[0, :, 1, 2], inside, atol=1e-4, rtol=0)
    for row in (0, 2, 3):
        torch.testing.assert_close(flat[0, :, row, 2], pad)


# ---------------------------------------------------------------------------- BERT vocab for BLIP models
WORDS = ["a", "red", "dog", "photo", "of", "blue", "car", "and", "green", "cat", "?", ",", "."]


def _write_bert_vocab(d: Path) -> None:
    """A 30,522-entry vocab with bert-base-uncased's special ids and yes=2748 / no=2053."""
    vocab = [f"##x{i}" for i in range(30522)]
    vocab[0], vocab[100], vocab[101], vocab[102], vocab[103] = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
    vocab[2748], vocab[2053] = "yes", "no"
    for i, w in enumerate(WORDS):
        vocab[3000 + i] = w
    d.mkdir(parents=True, exist_ok=True)
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------- ImageReward
IR_VISION = dict(hidden_size=48, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                 image_size=32, patch_size=16, layer_norm_eps=1e-6, hidden_act="gelu")
IR_MED = {"architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
          "hidden_dropout_prob": 0.1, "hidden_size": 32, "initializer_range": 0.02, "intermediate_size": 64,
          "layer_norm_eps": 1e-12, "max_position_embeddings": 64, "model_type": "bert", "num_attention_heads": 4,
          "num_hidden_layers": 2, "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": 30524,
          "encoder_width": 768, "add_cross_attention": True}


def _imagereward_repo(root: Path):
    """ImageReward.pt in the original key layout: a timm ViT (BLIP's vit.py names), a BLIP text
    encoder, unused ITC projections, the position_ids buffer, and the reward MLP."""
    from timm.models.vision_transformer import VisionTransformer
    from transformers import BlipTextConfig, BlipTextModel

    vit = VisionTransformer(img_size=32, patch_size=16, embed_dim=48, depth=2, num_heads=4, num_classes=0, global_pool="token").eval()
    text = BlipTextModel(
        BlipTextConfig(vocab_size=30524, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                       max_position_embeddings=64, encoder_hidden_size=48),
        add_pooling_layer=False,
    ).eval()
    mlp = torch.nn.Sequential(torch.nn.Linear(32, 1024), torch.nn.Dropout(0.2), torch.nn.Linear(1024, 128),
                              torch.nn.Dropout(0.2), torch.nn.Linear(128, 64), torch.nn.Dropout(0.1),
                              torch.nn.Linear(64, 16), torch.nn.Linear(16, 1)).eval()
    for i, m in enumerate((vit, text, mlp)):
        _randomize(m, seed=10 + i)
    state = {f"blip.visual_encoder.{k}": v for k, v in vit.state_dict().items()}
    state |= {f"blip.text_encoder.{k}": v for k, v in text.state_dict().items()}
    state |= {"blip.text_encoder.embeddings.position_ids": torch.arange(64)[None]}
    state |= {"blip.vision_proj.weight": torch.zeros(16, 48), "blip.vision_proj.bias": torch.zeros(16),
              "blip.text_proj.weight": torch.zeros(16, 32), "blip.text_proj.bias": torch.zeros(16)}
    state |= {f"mlp.layers.{k}": v for k, v in mlp.state_dict().items()}
    repo = root / "zai-org" / "ImageReward"
    repo.mkdir(parents=True)
    torch.save(state, repo / "ImageReward.pt")
    (repo / "med_config.json").write_text(json.dumps(IR_MED))
    _write_bert_vocab(root / "google-bert" / "bert-base-uncased")
    return vit, text, mlp, state


def test_imagereward_key_mapping_on_original_names():
    from lpo_bench.metrics.imagereward import imagereward_key_to_hf

    cases = {
        "blip.visual_encoder.cls_token": "vision.embeddings.class_embedding",
        "blip.visual_encoder.pos_embed": "vision.embeddings.position_embedding",
        "blip.visual_encoder.patch_embed.proj.weight": "vision.embeddings.patch_embedding.weight",
        "blip.visual_encoder.blocks.23.attn.qkv.bias": "vision.encoder.layers.23.self_attn.qkv.bias",
        "blip.visual_encoder.blocks.0.attn.proj.weight": "vision.encoder.layers.0.self_attn.projection.weight",
        "blip.visual_encoder.blocks.5.norm2.weight": "vision.encoder.layers.5.layer_norm2.weight",
        "blip.visual_encoder.blocks.5.mlp.fc2.bias": "vision.encoder.layers.5.mlp.fc2.bias",
        "blip.visual_encoder.norm.bias": "vision.post_layernorm.bias",
        "blip.text_encoder.encoder.layer.11.crossattention.self.key.weight": "text.encoder.layer.11.crossattention.self.key.weight",
        "blip.text_encoder.embeddings.word_embeddings.weight": "text.embeddings.word_embeddings.weight",
        "mlp.layers.7.bias": "mlp.layers.7.bias",
        "blip.text_encoder.embeddings.position_ids": None,
        "blip.vision_proj.weight": None,
        "blip.text_proj.bias": None,
    }
    for key, expected in cases.items():
        assert imagereward_key_to_hf(key) == expected, key
    for bad in ("blip.visual_encoder.head.weight", "blip.text_decoder.cls.bias", "visual_encoder.norm.bias"):
        with pytest.raises(KeyError):
            imagereward_key_to_hf(bad)


def test_imagereward_matches_reference_towers(tmp_path):
    from transformers import BertTokenizer

    from lpo_bench.metrics.imagereward import REWARD_MEAN, REWARD_STD, ImageReward

    vit, text, mlp, _ = _imagereward_repo(tmp_path)
    with pytest.raises(HarnessError, match="not the pinned zai-org/ImageReward@5736be0"):
        ImageReward(weights_dir=tmp_path, vision_config=IR_VISION).load()
    scorer = ImageReward(weights_dir=tmp_path, vision_config=IR_VISION, verify_sha256=False, batch_size=2)
    prov = scorer.load()
    assert prov.checkpoint.endswith("+google-bert/bert-base-uncased@86b5e0934494bd15c9632b12f734a8a67f723594")
    images = _images(seed=9)
    pixels = _normalised_8bit(images)
    with torch.no_grad():
        # the vision tower equals timm's ViT forward (BLIP's vit.py), token by token
        torch.testing.assert_close(scorer._net.vision(pixel_values=pixels).last_hidden_state, vit.forward_features(pixels),
                                   rtol=1e-4, atol=1e-4)
        tok = BertTokenizer.from_pretrained(tmp_path / "google-bert" / "bert-base-uncased")(
            PROMPTS, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
        img = vit.forward_features(pixels)
        h = text(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"], encoder_hidden_states=img,
                 encoder_attention_mask=torch.ones(img.shape[:-1], dtype=torch.long)).last_hidden_state[:, 0]
        expected = (mlp(h).squeeze(-1) - REWARD_MEAN) / REWARD_STD
    torch.testing.assert_close(scorer.score(images, PROMPTS), expected, rtol=1e-4, atol=1e-4)


def test_imagereward_rejects_incomplete_or_foreign_checkpoints(tmp_path):
    from lpo_bench.metrics.imagereward import ImageReward

    _, _, _, state = _imagereward_repo(tmp_path)
    path = tmp_path / "zai-org" / "ImageReward" / "ImageReward.pt"
    torch.save({k: v for k, v in state.items() if not k.startswith("mlp.")}, path)
    with pytest.raises(HarnessError, match="missing mlp.layers.0"):
        ImageReward(weights_dir=tmp_path, vision_config=IR_VISION, verify_sha256=False).load()
    torch.save(state | {"blip.text_decoder.cls.predictions.bias": torch.zeros(3)}, path)
    with pytest.raises(HarnessError, match="unexpected weights, e.g. blip.text_decoder"):
        ImageReward(weights_dir=tmp_path, vision_config=IR_VISION, verify_sha256=False).load()


# ---------------------------------------------------------------------------- BLIP-VQA
def _blip_vqa_repo(root: Path):
    from transformers import BlipConfig, BlipForQuestionAnswering

    cfg = BlipConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=16),
        text_config=dict(vocab_size=30524, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=64),
    )
    torch.manual_seed(0)
    model = BlipForQuestionAnswering(cfg).eval()
    _randomize(model, seed=20)
    repo = root / "Salesforce" / "blip-vqa-capfilt-large"
    repo.mkdir(parents=True)
    cfg.save_pretrained(repo)
    torch.save(model.state_dict(), repo / "pytorch_model.bin")
    _write_bert_vocab(repo)
    (repo / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "tokenizer_class": "BertTokenizer"}))
    return model


CHUNKS = {PROMPTS[0]: ["a red dog"], PROMPTS[1]: ["a photo", "a blue car", "the left", "a green cat"], PROMPTS[2]: []}


def _official_yes_probability(model, tok, pixels: torch.Tensor, question: str) -> float:
    """BLIP_VQA.vqa_prob of the official code, on the HF modules: full-vocabulary softmax, then the ratio."""
    q = tok([R.pre_question(question)], padding="longest", truncation=True, max_length=35, return_tensors="pt")
    ids = q["input_ids"].clone()
    ids[:, 0] = 30523
    img = model.vision_model(pixel_values=pixels).last_hidden_state
    states = model.text_encoder(input_ids=ids, attention_mask=q["attention_mask"], encoder_hidden_states=img,
                                encoder_attention_mask=torch.ones(img.shape[:-1], dtype=torch.long)).last_hidden_state
    logits = model.text_decoder(input_ids=torch.tensor([[30522]]), encoder_hidden_states=states,
                                encoder_attention_mask=q["attention_mask"]).logits[:, 0]
    p = torch.softmax(logits, dim=-1)[0]
    return float(p[2748] / (p[2748] + p[2053]))


def test_blip_vqa_matches_official_procedure(tmp_path):
    from transformers import BertTokenizer

    from lpo_bench.metrics.blip_vqa import BlipVQA

    model = _blip_vqa_repo(tmp_path)
    scorer = BlipVQA(weights_dir=tmp_path, noun_chunks=CHUNKS, image_size_px=32, batch_size=2)
    prov = scorer.load()
    assert "Salesforce/blip-vqa-capfilt-large@e53f95265aeab69013fabb5380500ab984adbbb4+noun-chunks-sha256:" in prov.checkpoint
    images = _images(seed=11)
    scores = scorer.score(images, PROMPTS)
    tok = BertTokenizer.from_pretrained(tmp_path / "Salesforce" / "blip-vqa-capfilt-large")
    pixels = _normalised_8bit(images)
    expected = []
    with torch.no_grad():
        for i, prompt in enumerate(PROMPTS):
            questions = R.blip_vqa_questions(CHUNKS[prompt])
            probs = [None if q is None else _official_yes_probability(model, tok, pixels[i : i + 1], q) for q in questions]
            expected.append(R.blip_vqa_image_score(probs))
    assert scores.tolist() == pytest.approx(expected, abs=2e-4)  # 4-decimal rounding may flip on float noise
    assert scores[2] == 1.0  # no noun chunk -> no question -> factor 1
    scorer.image_size_px = 48  # the 480-vs-384 path: interpolated position embeddings
    wide = scorer.score(_images(size=40), PROMPTS)
    assert ((wide >= 0) & (wide <= 1)).all() and not torch.equal(wide, scores)


def test_blip_vqa_noun_chunk_sources(tmp_path):
    from lpo_bench.metrics.blip_vqa import BlipVQA

    _blip_vqa_repo(tmp_path)
    table = tmp_path / "chunks.json"
    table.write_text(json.dumps({"a red dog": ["a red dog"]}))
    scorer = BlipVQA(weights_dir=tmp_path, noun_chunks=table, image_size_px=32)
    scorer.load()
    with pytest.raises(HarnessError, match="no noun chunks for prompt 'a dog'"):
        scorer.score(_images(n=1), ["a dog"])
    try:
        import spacy  # noqa: F401
    except ImportError:
        with pytest.raises(HarnessError, match="spaCy noun chunks"):
            BlipVQA(weights_dir=tmp_path).load()


# ---------------------------------------------------------------------------- common behaviour
def _adapters():
    from lpo_bench.registry import METRICS, resolve

    return [resolve("metric", name) for name in METRICS if not name.startswith("toy-")]


def test_registry_names_resolve_to_adapters():
    classes = _adapters()
    assert {c.__name__ for c in classes} == {"PickScore", "HPSv20", "HPSv21", "ImageReward", "LaionAesthetic", "CLIPScore", "BlipVQA"}
    for cls in classes:
        assert cls.higher_is_better and cls.id and cls.version
        # evaluation.load_metric passes weights_dir only to adapters whose signature lists it
        assert "weights_dir" in inspect.signature(cls).parameters


@pytest.mark.parametrize("index", range(7))
def test_missing_weights_fail_with_instructions(tmp_path, monkeypatch, index):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    cls = _adapters()[index]
    with pytest.raises(HarnessError) as err:
        cls(weights_dir=tmp_path / "empty").load()
    msg = str(err.value)
    assert "\n" not in msg and "--weights-dir" in msg
    assert re.search(r"[\w-]+/[\w.-]+@[0-9a-f]{7}", msg), msg  # names repo@revision


def test_score_before_load_and_bad_inputs(tmp_path):
    from lpo_bench.metrics.clipscore import CLIPScore

    scorer = CLIPScore(weights_dir=tmp_path)
    with pytest.raises(HarnessError, match="call load"):
        scorer.score(_images(), PROMPTS)
    from lpo_bench.metrics._common import check_inputs

    with pytest.raises(HarnessError, match=r"\[b, 3, H, W\]"):
        check_inputs(torch.zeros(3, 32, 32), PROMPTS)
    with pytest.raises(HarnessError, match="3 images but 2 prompts"):
        check_inputs(_images(), PROMPTS[:2])

