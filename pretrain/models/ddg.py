"""Dual-Domain Guidance (DDG): a frequency branch that guides attention over the visible tokens.

Frequency branch (paper Eq. 3): float32 FFT of the visible-only image, centred spectrum,
learnable radial filter `H = alpha * exp(-beta * (D / r)^2)` (or `1 - H`), inverse FFT,
patch embedding, tokens gathered at the visible positions.
Fusion (paper Eq. 5): `softmax(Q_s (K_s + K_f)^T / sqrt(d)) (V_s + V_f)`, chained over the
blocks: the frequency tokens give K_f/V_f to the first block, each later block takes them
from the previous block's output, and the encoder's tokens stay the query throughout.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from timm.layers import Mlp, PatchEmbed
from torch import Tensor, nn

from pretrain.models.configs import DDG_FILTERS, ModelConfig
from pretrain.models.encoders import TokenNorm, init_weights
from pretrain.models.masking import PatchMask, gather_tokens, upsample_visible, visible_grid


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _inverse_softplus(y: float) -> float:
    return math.log(math.expm1(y))


def _autocast_off(device: torch.device) -> AbstractContextManager:
    """Disable autocast on this device (the meta device, used to count FLOPs, has none)."""
    if device.type == "meta":
        return nullcontext()
    return torch.autocast(device_type=device.type, enabled=False)


class FrequencyFilter(nn.Module):
    """Learnable radial filter on the centred 2-D spectrum of an image (paper Eq. 3).

    alpha in (0, 1) and r in (0, 1) (relative to the largest radius) via sigmoid, beta > 0 via
    softplus; all three are registered parameters, so the optimiser trains them.
    """

    def __init__(
        self, shape: str = "highpass", alpha: float = 0.5, beta: float = 1.0, radius: float = 0.5
    ) -> None:
        super().__init__()
        if shape not in DDG_FILTERS:
            raise ValueError(f"ddg_filter={shape!r} is not one of {DDG_FILTERS}")
        self.shape = shape
        self.alpha_logit = nn.Parameter(torch.tensor(_logit(alpha)))
        self.beta_raw = nn.Parameter(torch.tensor(_inverse_softplus(beta)))
        self.radius_logit = nn.Parameter(torch.tensor(_logit(radius)))

    @property
    def alpha(self) -> Tensor:
        return torch.sigmoid(self.alpha_logit)

    @property
    def beta(self) -> Tensor:
        return F.softplus(self.beta_raw)

    @property
    def radius(self) -> Tensor:
        return torch.sigmoid(self.radius_logit)

    def transfer(self, height: int, width: int, device: torch.device) -> Tensor:
        """H(u, v) [H, W] in float32 on the fftshift-ed grid (zero frequency at the centre)."""
        rows = torch.arange(height, device=device, dtype=torch.float32) - height // 2
        cols = torch.arange(width, device=device, dtype=torch.float32) - width // 2
        distance = torch.sqrt(rows[:, None] ** 2 + cols[None, :] ** 2)  # [H, W]
        relative = distance / distance.max().clamp_min(1.0)  # D / D_max in [0, 1]
        gaussian = self.alpha.float() * torch.exp(
            -self.beta.float() * (relative / self.radius.float()) ** 2
        )
        return 1.0 - gaussian if self.shape == "highpass" else gaussian

    def forward(self, imgs: Tensor) -> Tensor:
        """Filtered image [N, C, H, W] in float32 (autocast off: torch.fft rejects bf16)."""
        with _autocast_off(imgs.device):
            x = imgs.float()
            spectrum = torch.fft.fftshift(torch.fft.fft2(x), dim=(-2, -1))  # [N, C, H, W] complex
            spectrum = spectrum * self.transfer(x.shape[-2], x.shape[-1], x.device)
            return torch.fft.ifft2(torch.fft.ifftshift(spectrum, dim=(-2, -1))).real


class GuidedAttention(nn.Module):
    """Eq. 5: queries, keys and values of the spatial tokens; guidance tokens add to K and V.

    timm's Attention computes q, k, v from one input only, so the injection is written here;
    it still runs on `scaled_dot_product_attention` (fused kernels).
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.guide_kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def _heads(self, x: Tensor, parts: int) -> Tensor:
        n, length, _ = x.shape
        return x.reshape(n, length, parts, self.num_heads, -1).permute(2, 0, 3, 1, 4)

    def forward(self, x: Tensor, guide: Tensor) -> Tensor:
        """x, guide: [N, Lv, D] (same token order) -> [N, Lv, D]."""
        q, k_s, v_s = self._heads(self.qkv(x), 3)  # each [N, heads, Lv, D/heads]
        k_f, v_f = self._heads(self.guide_kv(guide), 2)
        out = F.scaled_dot_product_attention(q, k_s + k_f, v_s + v_f)
        return self.proj(out.transpose(1, 2).reshape(x.shape))


class GuidedBlock(nn.Module):
    """Pre-norm residual block: guided attention, then an MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = TokenNorm(dim)
        self.norm_guide = TokenNorm(dim)
        self.attn = GuidedAttention(dim, num_heads)
        self.norm2 = TokenNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, guide: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x), self.norm_guide(guide))
        return x + self.mlp(self.norm2(x))


class DualDomainGuidance(nn.Module):
    """The DDG bridge between encoder and decoder; its output replaces the encoder latent."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        dim = config.encoder_dim
        self.patch_size = config.patch_size
        self.grid_size = config.grid_size
        self.frequency_filter = FrequencyFilter(config.ddg_filter)
        self.freq_embed = PatchEmbed(config.image_hw, config.patch_size, config.in_chans, dim)
        self.blocks = nn.ModuleList(
            GuidedBlock(dim, config.num_heads, config.mlp_ratio) for _ in range(config.ddg_depth)
        )
        self.norm = TokenNorm(dim)
        self.apply(init_weights)

    def frequency_tokens(self, imgs: Tensor, patch_mask: PatchMask) -> Tensor:
        """Tokens [N, Lv, D] of the filtered visible-only image, at the visible positions."""
        visible = upsample_visible(visible_grid(patch_mask, self.grid_size), self.patch_size)
        # Masked patches are zeroed before the FFT: the global transform must not carry
        # masked pixels (the reconstruction targets) into the visible tokens.
        filtered = self.frequency_filter(imgs * visible.to(imgs.dtype))  # [N, C, H, W] float32
        filtered = filtered.to(self.freq_embed.proj.weight.dtype)  # a bf16 model gets bf16
        return gather_tokens(self.freq_embed(filtered), patch_mask.ids_keep)

    def forward(self, imgs: Tensor, patch_mask: PatchMask, latent: Tensor) -> Tensor:
        """latent: encoder output [N, Lv, D] -> guided latent [N, Lv, D]."""
        guide = self.frequency_tokens(imgs, patch_mask)
        for block in self.blocks:
            guide = block(latent, guide)  # the encoder tokens stay the query
        return self.norm(guide)
