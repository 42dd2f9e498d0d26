"""The demo's closing lines say what a short CPU run can and cannot show."""

from __future__ import annotations

from cli.demo import SHORT_RUN_STEPS, closing_lines, demo


def test_a_short_run_says_its_reconstructions_are_noise():
    lines = closing_lines(60, "dugi_mae_tiny")
    text = "\n".join(lines)
    assert "what 60 CPU steps of dugi_mae_tiny show" in text
    assert "reconstruction grid after 60 steps is noise" in text
    assert "differ by chance" in text and "inf590k pretrain" in text
    assert all(len(line) < 400 for line in lines)


def test_a_long_run_is_not_told_so():
    assert closing_lines(SHORT_RUN_STEPS, "dugi_mae_base") == []


def test_the_demo_default_is_a_short_run():
    steps = next(p for p in demo.params if p.name == "steps")
    assert steps.default < SHORT_RUN_STEPS and closing_lines(steps.default, "dugi_mae_tiny")
