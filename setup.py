"""Everything but the packages is in setup.cfg. The experiment configs (configs/, run from a checkout
as `--config=configs/NAME.py`) are installed as the package `mmdiff_jax_configs`, which
mmdiff_jax/installed_configs.py finds after a wheel install."""

import setuptools

setuptools.setup(
    packages=[*setuptools.find_packages(include=["mmdiff_jax", "mmdiff_jax.*"]), "mmdiff_jax_configs"],
    package_dir={"mmdiff_jax_configs": "configs"},
)
