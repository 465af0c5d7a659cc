"""Package discovery that pyproject.toml alone cannot express: `conf/` installed as `diffusion_align.conf`."""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["diffusion_align", "diffusion_align.*", "reward_models", "reward_models.*"])
    + ["diffusion_align.conf"],
    package_dir={"diffusion_align.conf": "conf"},
)
