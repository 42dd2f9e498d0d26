"""Optional feature-similarity dedupe: cosine similarity of encoder embeddings.

The Inf-590K paper also removed images whose encoder embeddings had cosine similarity
> 0.85. Any timm-loadable model folder works (`config.json` + weights, e.g. an encoder written
by `inf590k export`); it is loaded through timm's `local-dir:` scheme, never through the
`pretrain` package (the `inf590k dedupe` command imports it, which registers the toolkit's
encoders with timm, and converts a released InfMAE / ConvMAE / MAE checkpoint into such a
folder first). The search is exact (all pairs, in blocks of `chunk` rows with torch
matmuls), so its cost is quadratic: fine for up to ~10^5 images on a CPU, use a GPU beyond.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

DEFAULT_THRESHOLD = 0.85


@dataclass(frozen=True)
class FeatureConfig:
    """One field per `inf590k dedupe --feature-*` option."""

    model_dir: Path  # a timm model folder (config.json + model.safetensors)
    threshold: float = DEFAULT_THRESHOLD  # cosine similarity above which images are duplicates
    batch_size: int = 64
    device: str = "cpu"


def load_encoder(model_dir: Path, device: str):
    """The encoder with its classifier removed, in eval mode, and its input size and channels."""
    import timm  # only with --feature-model: torch is the model side\'s

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(
            f"--feature-model {model_dir}: no config.json; pass a folder written by `inf590k export` "
            "or timm's save_for_hf"
        )
    try:
        model = timm.create_model(f"local-dir:{model_dir}", pretrained=True, num_classes=0)
    except RuntimeError as error:
        if "Unknown model" not in str(error):
            raise
        # The toolkit's encoders are registered with timm by the model package, which this
        # package does not import: `inf590k dedupe` (cli.py) does before it calls the stage.
        raise RuntimeError(
            f"--feature-model {model_dir}: {error}; import pretrain.models first (the "
            "`inf590k dedupe` command does) so timm knows the toolkit's encoders"
        ) from error
    model.eval().to(device)
    channels, height, width = model.pretrained_cfg.get("input_size", (1, 224, 224))
    return model, int(channels), (int(height), int(width))


def _batch(images: list[np.ndarray], size: tuple[int, int], channels: int, model) -> np.ndarray:
    """8-bit (or 16-bit) frames -> normalised [B, C, H, W] float32, as the encoder was trained."""
    height, width = size
    mean = float(np.mean(model.pretrained_cfg.get("mean", (0.5,))))
    std = float(np.mean(model.pretrained_cfg.get("std", (0.25,))))
    batch = np.empty((len(images), channels, height, width), dtype=np.float32)  # [B, C, H, W]
    for index, image in enumerate(images):
        scale = 255.0 if image.dtype == np.uint8 else float(np.iinfo(image.dtype).max)
        resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        batch[index] = ((resized.astype(np.float32) / scale) - mean) / std
    return batch


def embed(images_iter, count: int, config: FeatureConfig) -> np.ndarray:
    """L2-normalised embeddings [N, D] of `count` images from an iterator of [H, W] arrays."""
    import torch  # only with --feature-model: torch is the model side\'s

    model, channels, size = load_encoder(config.model_dir, config.device)
    out: list[np.ndarray] = []
    pending: list[np.ndarray] = []
    with torch.inference_mode():
        for image in images_iter:
            pending.append(image)
            if len(pending) == config.batch_size:
                out.append(_forward(model, _batch(pending, size, channels, model), config.device))
                pending = []
        if pending:
            out.append(_forward(model, _batch(pending, size, channels, model), config.device))
    embeddings = np.concatenate(out) if out else np.empty((0, model.num_features), np.float32)
    if len(embeddings) != count:
        raise RuntimeError(f"embedded {len(embeddings)} images, expected {count}")
    return embeddings


def _forward(model, batch: np.ndarray, device: str) -> np.ndarray:
    import torch  # only with --feature-model: torch is the model side\'s

    features = model(torch.from_numpy(batch).to(device)).float()  # [B, D]
    return torch.nn.functional.normalize(features, dim=1).cpu().numpy()


def similar_pairs(
    embeddings: np.ndarray, threshold: float, chunk: int = 4096
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair i < j with cosine(embeddings[i], embeddings[j]) > threshold (exact)."""
    import torch  # only with --feature-model: torch is the model side\'s

    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"--feature-threshold must be in -1..1, got {threshold}")
    vectors = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))  # [N, D]
    found_i, found_j, found_s = [], [], []
    for start in range(0, len(vectors), chunk):
        sims = vectors[start : start + chunk] @ vectors[start:].T  # [chunk, N - start]
        rows, cols = torch.nonzero(sims > threshold, as_tuple=True)
        upper = cols > rows  # column offset is `start`: j = start + col > i = start + row
        found_i.append((rows[upper] + start).numpy())
        found_j.append((cols[upper] + start).numpy())
        found_s.append(sims[rows[upper], cols[upper]].numpy())
    if not found_i:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    return np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_s)
