"""The experiment configs (configs/*.py) as installed with the package (as `mmdiff_jax_configs`).

In a checkout `--config=configs/imglabel.py` names the file in the repository; after `pip install`
(a wheel has no configs/ directory beside the working directory) the same flag finds the installed
copy, so the README's commands run from any directory.
"""

from __future__ import annotations

import os
import re

from mmdiff_jax.errors import MissingFileError

_CONFIG_FLAG = re.compile(r"^(--config=)(?:.*/)?configs/(\w+\.py)(:.*)?$")


def installed_config_path(name: str) -> str:
  """The installed file of configs/`name` (e.g. "imglabel.py"); FileNotFoundError naming the
  installed ones if there is no such config."""
  try:
    import mmdiff_jax_configs  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise MissingFileError(f"--config: no config {name!r} here, and no installed configs (the "
                           f"package is not installed)") from None
  directory = os.path.dirname(os.path.abspath(mmdiff_jax_configs.__file__))
  path = os.path.join(directory, name)
  if not os.path.isfile(path):
    available = sorted(f for f in os.listdir(directory) if f.endswith(".py") and f[0] != "_")
    raise MissingFileError(f"--config: no config {name!r} here or among the installed ones "
                           f"({directory}: {available})")
  return path


def with_installed_configs(argv: list[str]) -> list[str]:
  """argv with each --config=[...]configs/NAME.py[:variant] that is not a file here replaced by the
  installed copy of configs/NAME.py (the variant kept); any other --config file must exist."""
  def resolve(arg: str) -> str:
    if not arg.startswith("--config="):
      return arg
    path = arg.split("=", 1)[1].split(":", 1)[0]
    if os.path.isfile(path):
      return arg
    match = _CONFIG_FLAG.match(arg)
    if not match:
      raise MissingFileError(f"--config={path}: no such file")
    flag, name, variant = match.groups()
    return flag + installed_config_path(name) + (variant or "")
  return [resolve(arg) for arg in argv]
