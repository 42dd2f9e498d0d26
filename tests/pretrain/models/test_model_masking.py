"""Masking strategies and patchify: entropy (Eq. 1-2) against scikit-image, grey, random."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from skimage.measure import shannon_entropy

from pretrain.models import IR_MEAN, IR_STD, create_model
from pretrain.models.masking import (
    entropy_masking,
    gray_masking,
    make_mask,
    num_visible,
    patch_entropy,
    random_masking,
)

PATCH = 16


def crops(uint8_images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W] -> the 8-bit crops [N, 1, H, W] that masking reads."""
    return torch.from_numpy(uint8_images).unsqueeze(1)


def normalise(uint8_images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W] -> normalised float [N, 1, H, W], as the training loop feeds the model."""
    x = torch.from_numpy(uint8_images).float().div(255.0).unsqueeze(1)
    return (x - IR_MEAN) / IR_STD


def skimage_patch_entropy(image: np.ndarray) -> np.ndarray:
    rows, cols = image.shape[0] // PATCH, image.shape[1] // PATCH
    return np.array(
        [
            shannon_entropy(image[r * PATCH : (r + 1) * PATCH, c * PATCH : (c + 1) * PATCH], base=2)
            for r in range(rows)
            for c in range(cols)
        ]
    )


def real_ir_images(root: Path, count: int = 6, size: int = 224) -> np.ndarray:
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in {".png", ".jpg"})
    # One image from each sample folder first, so every source is represented.
    by_source = {}
    for path in files:
        by_source.setdefault(path.relative_to(root).parts[0], path)
    chosen = list(by_source.values())
    chosen += [path for path in files if path not in chosen][: max(0, count - len(chosen))]
    images = []
    for path in chosen[:count]:
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        assert image is not None, f"unreadable sample {path}"
        images.append(cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA))
    return np.stack(images)


@pytest.mark.parametrize("chans", [1, 3])
@pytest.mark.parametrize("img_size", [64, (48, 80)])
def test_patchify_round_trip(chans: int, img_size: int | tuple[int, int]) -> None:
    model = create_model("mae_vit_tiny", in_chans=chans, img_size=img_size)
    height, width = model.config.image_hw
    imgs = torch.randn(2, chans, height, width)
    patches = model.patchify(imgs)
    assert patches.shape == (2, (height // PATCH) * (width // PATCH), PATCH * PATCH * chans)
    # Patch 1 (row 0, column 1), channels last within the patch.
    expected = imgs[0, :, :PATCH, PATCH : 2 * PATCH].permute(1, 2, 0).reshape(-1)
    assert torch.equal(patches[0, 1], expected)
    assert torch.equal(model.unpatchify(patches), imgs)


def test_patchify_rejects_bad_sizes() -> None:
    model = create_model("mae_vit_tiny")
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model.patchify(torch.randn(1, 1, 60, 64))
    with pytest.raises(ValueError, match="grid"):
        model.unpatchify(torch.randn(1, 15, 256))


def test_entropy_matches_skimage_on_random_patches() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 64, 96), dtype=np.uint8)
    # Low-entropy content too: few levels, constant patches.
    images[1] = rng.integers(0, 3, size=(64, 96), dtype=np.uint8) * 100
    images[2, :32] = 7
    ours = patch_entropy(torch.from_numpy(images).long(), PATCH).numpy()
    for image, row in zip(images, ours, strict=True):
        np.testing.assert_allclose(row, skimage_patch_entropy(image), atol=1e-5)
    assert ours[2, :12].max() == 0.0  # constant patches have zero entropy


def test_entropy_matches_skimage_on_real_infrared(ir_samples: Path) -> None:
    images = real_ir_images(ir_samples)
    ours = patch_entropy(torch.from_numpy(images).long(), PATCH).numpy()
    assert ours.shape == (len(images), 196)
    for image, row in zip(images, ours, strict=True):
        np.testing.assert_allclose(row, skimage_patch_entropy(image), atol=1e-5)


def test_entropy_mask_keeps_top_quarter_deterministically(ir_samples: Path) -> None:
    images = real_ir_images(ir_samples)
    imgs = crops(images)
    first = entropy_masking(imgs, PATCH, 0.75)
    second = entropy_masking(imgs.clone(), PATCH, 0.75)
    assert torch.equal(first.mask, second.mask)
    assert torch.equal(first.ids_keep, second.ids_keep)
    assert (first.mask == 0).sum(1).tolist() == [49] * len(imgs)
    entropy = patch_entropy(torch.from_numpy(images).long(), PATCH)
    visible = first.mask == 0
    # The highest entropy is always visible (some samples are blank: all ties), and no
    # masked patch beats a visible one.
    assert torch.equal(entropy.masked_fill(~visible, -1.0).max(1).values, entropy.max(1).values)
    lowest_visible = entropy.masked_fill(~visible, float("inf")).min(1).values
    highest_masked = entropy.masked_fill(visible, float("-inf")).max(1).values
    assert (lowest_visible >= highest_masked).all()


def test_entropy_ties_break_by_patch_index() -> None:
    imgs = crops(np.zeros((1, 64, 64), dtype=np.uint8))  # every patch has entropy 0
    patch_mask = entropy_masking(imgs, PATCH, 0.75)
    # Ascending stable sort, keep the last 4: the highest patch indices.
    assert patch_mask.ids_keep.tolist() == [[12, 13, 14, 15]]


def test_gray_mask_keeps_every_fourth_patch_by_brightness() -> None:
    rng = np.random.default_rng(1)
    # Each patch gets a distinct constant grey value, in a shuffled layout.
    values = rng.permutation(196).astype(np.uint8)
    image = np.kron(values.reshape(14, 14), np.ones((PATCH, PATCH), dtype=np.uint8))
    patch_mask = gray_masking(crops(image[None]), PATCH, 0.75)
    kept_values = sorted(values[patch_mask.ids_keep[0].numpy()].tolist())
    assert kept_values == sorted(values)[::4]
    assert int((patch_mask.mask == 0).sum()) == 49


def test_random_mask_ratio_and_restore_indices() -> None:
    imgs = torch.randn(4, 1, 224, 224)
    patch_mask = random_masking(imgs, PATCH, 0.75)
    assert (patch_mask.mask.sum(1) == 147).all()
    assert not torch.equal(patch_mask.mask[0], patch_mask.mask[1])
    # ids_restore un-shuffles cat(visible, masked) into image order.
    shuffled = torch.cat([torch.zeros(4, 49), torch.ones(4, 147)], dim=1)
    assert torch.equal(shuffled.gather(1, patch_mask.ids_restore), patch_mask.mask)
    assert (patch_mask.ids_keep.diff(dim=1) > 0).all()  # ascending patch order


@pytest.mark.parametrize("ratio,expected", [(0.75, 49), (0.5, 98), (0.0, 196), (0.9, 20)])
def test_num_visible(ratio: float, expected: int) -> None:
    assert num_visible(196, ratio) == expected


def test_bad_masking_input() -> None:
    with pytest.raises(ValueError, match="mask_ratio"):
        num_visible(196, 1.0)
    with pytest.raises(ValueError, match="not one of"):
        make_mask("checkerboard", torch.randn(1, 1, 32, 32), PATCH, 0.75)
    with pytest.raises(ValueError, match="multiples of 16"):
        make_mask("entropy", torch.randn(1, 1, 30, 32), PATCH, 0.75)
    imgs = torch.randn(1, 1, 32, 32)
    with pytest.raises(ValueError, match="needs the 8-bit crops"):
        make_mask("entropy", imgs, PATCH, 0.75)
    with pytest.raises(ValueError, match="do not match"):
        make_mask("gray", imgs, PATCH, 0.75, torch.zeros(2, 1, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[N, 1, H, W\] or \[N, H, W\]"):
        entropy_masking(torch.zeros(32, 32, dtype=torch.uint8), PATCH, 0.75)


@pytest.mark.parametrize("strategy", ["entropy", "gray"])
@pytest.mark.parametrize("dtype", [torch.uint16, torch.int32, torch.float32])
def test_masking_refuses_anything_but_8_bit_crops(strategy: str, dtype: torch.dtype) -> None:
    """A 16-bit (or float) crop would be quantised silently: it is refused with a message."""
    pixels = torch.full((1, 1, 32, 32), 1000).to(dtype)
    with pytest.raises(ValueError, match="8-bit crop.*reduce 16-bit frames"):
        make_mask(strategy, pixels.float(), PATCH, 0.75, pixels)


def test_entropy_mask_reads_the_crop_not_the_normalised_input() -> None:
    """The crop decides: a normalised tensor from other pixels does not change the mask."""
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, size=(1, 64, 64), dtype=np.uint8)
    images[0, :32] = 9  # the top half is flat: zero entropy
    pixels = crops(images)
    expected = entropy_masking(pixels, PATCH, 0.75).ids_keep
    unrelated = torch.zeros(1, 1, 64, 64)
    assert torch.equal(make_mask("entropy", unrelated, PATCH, 0.75, pixels).ids_keep, expected)
    assert (expected >= 8).all()  # the visible patches are in the textured bottom half


def test_gray_ties_break_by_patch_index_on_integer_sums() -> None:
    """Patches of equal pixel sum tie exactly; the stable sort keeps patch order among them.

    The normalised means of such patches differ in the last float bit depending on the
    arrangement of their pixels, which used to decide among them.
    """
    generator = torch.Generator().manual_seed(3)
    base = torch.randint(0, 256, (256,), generator=generator)
    # Every patch holds the same pixels in a different order: equal sums, equal means.
    patches = [base[torch.randperm(256, generator=generator)].reshape(16, 16) for _ in range(16)]
    grid = torch.stack(patches).reshape(4, 4, 16, 16).permute(0, 2, 1, 3).reshape(64, 64)
    patch_mask = gray_masking(grid.to(torch.uint8)[None, None], PATCH, 0.75)
    # All tie: the order is the patch index, and every 4th along it stays visible.
    assert patch_mask.ids_keep.tolist() == [[0, 4, 8, 12]]


def test_three_channel_input_uses_first_channel() -> None:
    rng = np.random.default_rng(2)
    grey = crops(rng.integers(0, 256, size=(2, 64, 64), dtype=np.uint8))
    rgb = grey.expand(-1, 3, -1, -1).clone()
    rgb[:, 1:] = 0  # other channels must not matter
    assert torch.equal(entropy_masking(grey, PATCH, 0.75).mask, entropy_masking(rgb, PATCH, 0.75).mask)


def test_equal_entropy_patches_tie_break_by_index():
    """Patches whose histograms hold the same counts at other levels have bit-equal entropy.

    A float sum over the 256 bins in level order would differ in the last bit between such
    patches, and rounding noise, not the patch index, would choose the visible ones.
    """
    import torch

    from pretrain.models.masking import entropy_masking, patch_entropy

    generator = torch.Generator().manual_seed(0)
    counts = [37, 29, 23, 19, 17, 13, 11, 31, 41, 35]  # 256 pixels per 16x16 patch
    patches = []
    for _ in range(16):
        levels = torch.randperm(256, generator=generator)[: len(counts)]
        values = torch.cat([torch.full((c,), int(level)) for c, level in zip(counts, levels, strict=True)])
        patches.append(values[torch.randperm(256, generator=generator)].reshape(16, 16))
    grid = torch.stack(patches).reshape(4, 4, 16, 16).permute(0, 2, 1, 3).reshape(64, 64)  # [64, 64]
    assert torch.unique(patch_entropy(grid[None], 16)).numel() == 1
    pixels = grid.to(torch.uint8)[None, None]  # [1, 1, 64, 64]
    assert entropy_masking(pixels, 16, 0.75).ids_keep.tolist() == [[12, 13, 14, 15]]
