"""Synthetic infrared frames in the folder layouts of public sources (tests and the demo)."""

from inf590k.synth.layouts import (
    LAYOUTS_16BIT,
    SYNTH_LAYOUTS,
    SynthConfig,
    SynthError,
    SynthSummary,
    synthesize,
)

__all__ = ["LAYOUTS_16BIT", "SYNTH_LAYOUTS", "SynthConfig", "SynthError", "SynthSummary", "synthesize"]
