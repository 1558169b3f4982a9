"""What the entry points share in reading their command line."""

from __future__ import annotations

import importlib.util
import sys

from absl import flags

from mmdiff_jax.config import RENAMED_KEYS
from mmdiff_jax.errors import UserError


def unknown_override(argv: list[str]) -> str | None:
  """The first --config.KEY=VALUE of `argv` whose KEY the config (its --config=FILE[:variant]) does
  not have, as a message naming the whole key and the keys allowed there; None if there is none."""
  config_arg = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if config_arg is None:
    return None
  path, _, variant = config_arg.partition(":")
  spec = importlib.util.spec_from_file_location("_config_for_overrides", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(variant) if variant else module.get_config()
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    key = arg[len("--config."):].split("=", 1)[0]
    if key in RENAMED_KEYS:
      return f"{arg}: config key {key!r} is now {RENAMED_KEYS[key]!r} (renamed; the same meaning)"
    node, parts = config, key.split(".")
    for i, part in enumerate(parts):
      if not hasattr(node, "keys") or part not in node:
        where = ".".join(parts[:i]) or "config"
        allowed = sorted(node.keys()) if hasattr(node, "keys") else f"none ({where} is a value)"
        return (f"{arg}: config key {'.'.join(parts[:i + 1])!r} is unknown; allowed under {where}: "
                f"{allowed}")
      node = node[part]
  return None


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing (an entry point's `flags_parser` for `app.run`), but an override of a key the
  config lacks is named in full, without a traceback (ml_collections raises a KeyError or
  AttributeError naming only its last part), absl's own errors are one line too, and asking for
  help exits with status 0."""
  try:
    return flags.FLAGS(argv)
  except SystemExit as exit_:
    # Only absl's help flags (--help, --helpfull, ...) exit while parsing: they print the help to
    # stdout and then exit with status 1, which would fail a script that merely asked for help.
    sys.exit(0 if exit_.code == 1 else exit_.code)
  except (KeyError, AttributeError) as error:
    print(f"FATAL Flags parsing error: {unknown_override(argv) or error}", file=sys.stderr)
    sys.exit(1)
  except flags.Error as error:  # what absl's own parser prints (a bad --mode, a missing --workdir)
    cause = _user_error_behind(error)  # e.g. an unknown config variant, raised inside the parser
    print(f"FATAL {cause}" if cause else
          f"FATAL Flags parsing error: {error}\nPass --helpshort or --helpfull to see help on flags.",
          file=sys.stderr)
    sys.exit(1)


def _user_error_behind(error: BaseException | None) -> UserError | None:
  """The first user error that `error` was raised while handling, if any (ml_collections wraps a
  config file's error in one of the same type, with the traceback in its message)."""
  found = None
  while error is not None:
    found = error if isinstance(error, UserError) else found
    error = error.__cause__ or error.__context__
  return found
