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

from pretrain.models.configs import MASKINGS

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


def eight_bit_plane(pixels: Tensor, strategy: str) -> Tensor:
    """The 8-bit crop [N, H, W] (uint8) that entropy and grey masking read.

    Accepts [N, H, W] or [N, C, H, W] (grey replicated: the first channel is used). Anything
    but uint8 is refused: a 16-bit or float crop would be quantised silently otherwise.
    """
    if not isinstance(pixels, Tensor) or pixels.dtype != torch.uint8:
        dtype = getattr(pixels, "dtype", type(pixels).__name__)
        raise ValueError(
            f"masking={strategy!r} reads the 8-bit crop (uint8 [N, 1, H, W]), got {dtype}; "
            "reduce 16-bit frames to 8 bits first (the pretraining stream yields uint8 crops)"
        )
    if pixels.ndim == 4:
        return pixels[:, 0]
    if pixels.ndim == 3:
        return pixels
    raise ValueError(f"8-bit crops must be [N, 1, H, W] or [N, H, W], got {tuple(pixels.shape)}")


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


def entropy_masking(pixels: Tensor, patch_size: int, mask_ratio: float) -> PatchMask:
    """DuGI-MAE Eq. 2: sort patches by entropy ascending, keep the highest-entropy ones visible.

    `pixels`: the 8-bit crop (uint8 [N, 1, H, W]) the network input was normalised from.
    Deterministic: ties are broken by patch index (stable sort), no randomness.
    """
    levels = eight_bit_plane(pixels, "entropy").long()  # [N, H, W]
    entropy = patch_entropy(levels, patch_size)  # [N, L]
    num_patches = entropy.shape[1]
    order = torch.argsort(entropy, dim=1, stable=True)  # [N, L] ascending entropy
    keep = num_visible(num_patches, mask_ratio)
    return mask_from_visible(order[:, num_patches - keep :], num_patches)


def gray_masking(pixels: Tensor, patch_size: int, mask_ratio: float) -> PatchMask:
    """InfMAE: sort patches by mean grey value and keep evenly spaced ones along that order.

    At mask ratio 0.75 that is every 4th patch, so the visible set spans the intensity range.
    The order is taken on integer pixel sums of the 8-bit crop (uint8 [N, 1, H, W]), so patches
    of equal brightness tie exactly and the stable sort breaks the tie by patch index.
    """
    plane = eight_bit_plane(pixels, "gray").long()  # [N, H, W]
    brightness = patch_values(plane, patch_size).sum(-1)  # [N, L] integer sums
    num_patches = brightness.shape[1]
    order = torch.argsort(brightness, dim=1, stable=True)  # [N, L]
    keep = num_visible(num_patches, mask_ratio)
    picks = torch.arange(keep, device=pixels.device) * num_patches // keep  # [Lv]
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


PIXEL_MASKINGS = ("entropy", "gray")  # strategies that read the 8-bit crop


def make_mask(
    strategy: str, imgs: Tensor, patch_size: int, mask_ratio: float, pixels: Tensor | None = None
) -> PatchMask:
    """Dispatch to one masking strategy by name; entropy and gray read `pixels`, the 8-bit crop
    (uint8 [N, 1, H, W]) that `imgs` was normalised from."""
    if imgs.ndim != 4 or imgs.shape[-2] % patch_size or imgs.shape[-1] % patch_size:
        raise ValueError(
            f"images must be [N, C, H, W] with H and W multiples of {patch_size}; "
            f"got {tuple(imgs.shape)}"
        )
    if strategy in PIXEL_MASKINGS:
        if pixels is None:
            raise ValueError(
                f"masking={strategy!r} needs the 8-bit crops: call model(imgs, pixels) with "
                "pixels the uint8 [N, 1, H, W] images that imgs was normalised from"
            )
        if pixels.shape[0] != imgs.shape[0] or pixels.shape[-2:] != imgs.shape[-2:]:
            raise ValueError(
                f"pixels {tuple(pixels.shape)} do not match images {tuple(imgs.shape)}: pass "
                "the 8-bit crops of the same batch"
            )
    if strategy == "entropy":
        return entropy_masking(pixels, patch_size, mask_ratio)
    if strategy == "gray":
        return gray_masking(pixels, patch_size, mask_ratio)
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
