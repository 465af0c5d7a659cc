"""The hydra configuration tree, installed as `diffusion_align.conf` (see setup.py)."""
