"""Synthetic infrared frames in the folder layouts of public sources (tests and the demo):
`config` (options, layouts), `render` (scenes), `plans` (each layout's frames), `files` (the
other files of a layout), `layouts` (writing a tree: `synthesize`)."""

from inf590k.synth.config import LAYOUTS_16BIT, SYNTH_LAYOUTS, SynthConfig, SynthError, SynthSummary
from inf590k.synth.layouts import synthesize

__all__ = [
    "LAYOUTS_16BIT",
    "SYNTH_LAYOUTS",
    "SynthConfig",
    "SynthError",
    "SynthSummary",
    "synthesize",
]
