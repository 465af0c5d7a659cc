"""Tests of the Syn-Pic generator (``diffusion_align.generate``): one file per module, plus end-to-end runs."""
