"""Patch masking strategies: entropy (DuGI-MAE, Eq. 1-2), grey value (InfMAE), random (MAE).

Every strategy is batched and runs on the images' device; none loops over images or patches.
A mask is returned in MAE's convention: `mask` is 1 at masked patches, `ids_keep` lists the
visible patches (ascending patch index) and `ids_restore` un-shuffles
`cat(visible tokens, mask tokens)` back to image order.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from pretrain.models.configs import IR_MEAN, IR_STD, MASKINGS

INTENSITY_LEVELS = 256  # J of Eq. 1: the levels of the 8-bit input


class PatchMask(NamedTuple):
    """Which patches the encoder sees."""

    ids_keep: Tensor  # [N, Lv] visible patch indices, ascending
    ids_restore: Tensor  # [N, L] position of each patch in cat(visible, masked)
    mask: Tensor  # [N, L] 1 = masked, 0 = visible, image order


def num_visible(num_patches: int, mask_ratio: float) -> int:
    """Patches kept visible: `N - floor(lambda * N)` (49 of 196 at lambda = 0.75)."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio={mask_ratio} must be in [0, 1)")
    return num_patches - math.floor(mask_ratio * num_patches)


def intensity_levels(imgs: Tensor) -> Tensor:
    """8-bit intensities [N, H, W] (int64) recovered from normalised images [N, C, H, W].

    Exact for images that came from uint8 / 255 and were normalised with IR_MEAN / IR_STD;
    3-channel input is grey replicated, so the first channel carries the intensities.
    """
    grey = imgs[:, 0].float()  # [N, H, W]
    levels = torch.round((grey * IR_STD + IR_MEAN) * (INTENSITY_LEVELS - 1))
    return levels.clamp_(0, INTENSITY_LEVELS - 1).long()


def patch_values(plane: Tensor, patch_size: int) -> Tensor:
    """[N, H, W] -> [N, L, p*p]: the pixels of each patch, patches in row-major order."""
    n, height, width = plane.shape
    rows, cols = height // patch_size, width // patch_size
    x = plane.reshape(n, rows, patch_size, cols, patch_size)
    return x.permute(0, 1, 3, 2, 4).reshape(n, rows * cols, patch_size * patch_size)


def patch_entropy(levels: Tensor, patch_size: int) -> Tensor:
    """Shannon entropy in bits of each patch's 256-level histogram (Eq. 1): [N, H, W] -> [N, L]."""
    pixels = patch_values(levels, patch_size)  # [N, L, p*p]
    counts = torch.zeros(
        (*pixels.shape[:2], INTENSITY_LEVELS), device=levels.device, dtype=torch.float32
    )
    counts.scatter_add_(2, pixels, torch.ones_like(pixels, dtype=torch.float32))  # [N, L, 256]
    # Sorted counts make the float sum's order depend only on the histogram's multiset, so
    # patches with equal entropy get bit-equal values and the stable argsort breaks the tie
    # by patch index (otherwise rounding noise would pick).
    counts = counts.sort(dim=-1).values
    probs = counts / pixels.shape[-1]
    # xlogy gives 0 * log 0 = 0 for empty bins.
    return -torch.special.xlogy(probs, probs).sum(-1) / math.log(2.0)  # [N, L]


def mask_from_visible(visible_ids: Tensor, num_patches: int) -> PatchMask:
    """Build the MAE-style index tensors from the chosen visible patch indices [N, Lv]."""
    n = visible_ids.shape[0]
    mask = torch.ones((n, num_patches), device=visible_ids.device)
    mask.scatter_(1, visible_ids, 0.0)  # [N, L]
    # Stable argsort puts visible patches first, each group in ascending patch order.
    ids_shuffle = torch.argsort(mask, dim=1, stable=True)  # [N, L]
    ids_restore = torch.argsort(ids_shuffle, dim=1)  # [N, L]
    return PatchMask(ids_shuffle[:, : visible_ids.shape[1]], ids_restore, mask)


def entropy_masking(imgs: Tensor, patch_size: int, mask_ratio: float) -> PatchMask:
    """DuGI-MAE Eq. 2: sort patches by entropy ascending, keep the highest-entropy ones visible.

    Deterministic: ties are broken by patch index (stable sort), no randomness.
    """
    entropy = patch_entropy(intensity_levels(imgs), patch_size)  # [N, L]
    num_patches = entropy.shape[1]
    order = torch.argsort(entropy, dim=1, stable=True)  # [N, L] ascending entropy
    keep = num_visible(num_patches, mask_ratio)
    return mask_from_visible(order[:, num_patches - keep :], num_patches)


def gray_masking(imgs: Tensor, patch_size: int, mask_ratio: float) -> PatchMask:
    """InfMAE: sort patches by mean grey value and keep evenly spaced ones along that order.

    At mask ratio 0.75 that is every 4th patch, so the visible set spans the intensity range.
    """
    mean_grey = patch_values(imgs[:, 0].float(), patch_size).mean(-1)  # [N, L]
    num_patches = mean_grey.shape[1]
    order = torch.argsort(mean_grey, dim=1, stable=True)  # [N, L]
    keep = num_visible(num_patches, mask_ratio)
    picks = torch.arange(keep, device=imgs.device) * num_patches // keep  # [Lv]
    return mask_from_visible(order[:, picks], num_patches)


def random_masking(
    imgs: Tensor, patch_size: int, mask_ratio: float, generator: torch.Generator | None = None
) -> PatchMask:
    """MAE: argsort of uniform noise, a fresh random subset per image."""
    n, _, height, width = imgs.shape
    num_patches = (height // patch_size) * (width // patch_size)
    noise = torch.rand((n, num_patches), device=imgs.device, generator=generator)  # [N, L]
    keep = num_visible(num_patches, mask_ratio)
    return mask_from_visible(torch.argsort(noise, dim=1)[:, :keep], num_patches)


def make_mask(strategy: str, imgs: Tensor, patch_size: int, mask_ratio: float) -> PatchMask:
    """Dispatch to one masking strategy by name."""
    if imgs.ndim != 4 or imgs.shape[-2] % patch_size or imgs.shape[-1] % patch_size:
        raise ValueError(
            f"images must be [N, C, H, W] with H and W multiples of {patch_size}; "
            f"got {tuple(imgs.shape)}"
        )
    if strategy == "entropy":
        return entropy_masking(imgs, patch_size, mask_ratio)
    if strategy == "gray":
        return gray_masking(imgs, patch_size, mask_ratio)
    if strategy == "random":
        return random_masking(imgs, patch_size, mask_ratio)
    raise ValueError(f"masking={strategy!r} is not one of {MASKINGS}")


def gather_tokens(tokens: Tensor, ids: Tensor) -> Tensor:
    """Select tokens [N, L, D] at indices [N, K] -> [N, K, D]."""
    return torch.gather(tokens, 1, ids.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def visible_grid(patch_mask: PatchMask, grid_size: tuple[int, int]) -> Tensor:
    """Visible-patch map [N, 1, rows, cols], 1 = visible, in the mask's dtype."""
    return (1.0 - patch_mask.mask).reshape(-1, 1, *grid_size)


def upsample_visible(visible: Tensor, factor: int) -> Tensor:
    """Nearest upsampling of a visible map [N, 1, h, w] -> [N, 1, h*f, w*f]."""
    return visible.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)
