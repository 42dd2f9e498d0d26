"""model-info: parameters and forward FLOPs per part, checked against METHOD.md's analytic cost."""

from __future__ import annotations

import pytest

from pretrain.models import format_model_info, model_info

# METHOD.md section 8: MAE ViT-B/16, 224, mask 0.75, decoder 512 x 8 = 9.78 GMACs forward.
MAE_BASE_GFLOPS = 2 * 9.78


def test_mae_vit_base_matches_the_analytic_cost() -> None:
    info = model_info("mae_vit_base")
    total = info["flops"]["total"] / 1e9
    assert abs(total - MAE_BASE_GFLOPS) / MAE_BASE_GFLOPS < 0.05, total
    assert info["flops"]["ddg"] == 0 and info["params"]["ddg"] == 0
    # ViT-B/16 encoder is ~85.8M parameters with its patch embedding; decoder 512x8 ~26M.
    assert 85e6 < info["params"]["encoder"] < 87e6
    assert 25e6 < info["params"]["decoder"] < 27e6
    # With an 8-block decoder, the decoder is more than half the forward cost (METHOD.md: ~54%).
    assert 0.5 < info["flops"]["decoder"] / info["flops"]["total"] < 0.6


def test_dugi_mae_base_has_every_part_and_a_small_decoder() -> None:
    info = model_info("dugi_mae_base")
    assert all(info["flops"][part] > 0 for part in ("encoder", "ddg", "decoder"))
    assert info["params"]["total"] == sum(info["params"][p] for p in ("encoder", "ddg", "decoder"))
    assert info["flops"]["decoder"] / info["flops"]["total"] < 0.25


def test_flops_scale_with_image_size() -> None:
    small = model_info("mae_vit_tiny", image_size=64)["flops"]["total"]
    large = model_info("mae_vit_tiny", image_size=128)["flops"]["total"]
    assert 3.5 < large / small < 4.5  # 4x the patches, attention a little more


def test_format_lists_each_part() -> None:
    text = format_model_info(model_info("dugi_mae_tiny", image_size=64))
    lines = text.splitlines()
    assert lines[0].startswith("dugi_mae_tiny at 64x64")
    assert [line.split()[0] for line in lines[2:]] == ["encoder", "ddg", "decoder", "other",
                                                       "total"]


def test_bad_names_and_sizes() -> None:
    with pytest.raises(ValueError, match="choose one of"):
        model_info("vit_giant")
    with pytest.raises(ValueError, match="multiple"):
        model_info("mae_vit_base", image_size=100)
    with pytest.raises(ValueError, match="positive"):
        model_info("mae_vit_base", image_size=0)


def test_mae_vit_base_at_three_channels_is_the_analytic_19_6_gflops() -> None:
    """METHOD.md: 9.8 GMACs = 19.6 GFLOPs forward, with the class token through the decoder."""
    total = model_info("mae_vit_base", in_chans=3)["flops"]["total"] / 1e9
    assert abs(total - 19.6) / 19.6 < 0.005, total


def test_a_small_model_reads_in_mflops_and_huge_numbers_keep_their_columns() -> None:
    tiny = format_model_info(model_info("dugi_mae_tiny", image_size=64)).splitlines()
    assert tiny[1].split() == ["part", "params", "(M)", "MFLOPs", "MMACs"]
    total = tiny[-1].split()
    assert float(total[2]) > 1 and float(total[3]) == pytest.approx(float(total[2]) / 2, abs=0.01)
    huge = format_model_info(model_info("dugi_mae_base", image_size=16384)).splitlines()
    assert huge[1].split()[3] == "GFLOPs" and len(huge[-1].split()) == 4  # total, params, flops, macs
