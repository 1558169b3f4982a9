"""docs/CONFIG.md is the generated config reference, every config key has a meaning, and every
--config.KEY=VALUE the repository shows a user names a key its config has."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys
import textwrap

from mmdiff_jax import config_reference
from mmdiff_jax.command_line import unknown_override
from mmdiff_jax.config import RENAMED_KEYS

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_docs_config_md_is_the_generated_reference():
  committed = (ROOT / "docs" / "CONFIG.md").read_text()
  assert committed == config_reference.generate(), (
      "docs/CONFIG.md is stale: run `python3 -m mmdiff_jax.config_reference > docs/CONFIG.md`")


def test_every_config_key_has_a_meaning():
  missing = config_reference.undocumented_keys()
  assert not missing, (f"config keys without a comment in mmdiff_jax/config.py (add a trailing "
                       f"comment, one key per line): {missing}")


def test_every_key_is_in_the_table():
  text = config_reference.generate()
  for key in config_reference.flat_defaults():
    assert f"| `{key}` |" in text, key


def test_module_writes_the_reference_to_stdout():
  result = subprocess.run([sys.executable, "-m", "mmdiff_jax.config_reference"], cwd=ROOT,
                          capture_output=True, text=True, check=True)
  assert result.stdout == config_reference.generate()



# Where commands are shown to users: the docs, the launch and CI scripts, the notebooks, and the
# docstrings of configs and entry points.
COMMAND_FILES = ("*.md", "docs/*.md", "results/**/*.md", "launch/*", ".ci/*", "notebooks/*.ipynb",
                 "configs/*.py", "mmdiff_jax/**/*.py", "benchmarks/*.py", "benchmarks/*.sh")


def shown_overrides():
  """(file, config argument or None, override keys) per line (a shell line continued with a trailing
  backslash counts as one) that shows --config.KEY=VALUE overrides."""
  found = []
  for pattern in COMMAND_FILES:
    for path in sorted(ROOT.glob(pattern)):
      if not path.is_file():
        continue
      for line in path.read_text().replace("\\\n", " ").splitlines():
        keys = re.findall(r"--config\.([A-Za-z_][\w.]*)=", line)
        config = re.search(r"--config=(configs/[\w./]+\.py(?::\w+)?)", line)
        if keys:
          found.append((path.relative_to(ROOT), config and config.group(1), keys, line))
  return found


def test_every_override_shown_to_users_names_a_key_of_its_config():
  """A renamed or removed key in a shown command fails the user who copies it ('.ci/python312' once
  passed sampling.num_steps, renamed to sampling.sampler_steps, and stopped at its first command).
  With the command's config file on the line, the entry point's own check; otherwise some config
  file must have the key (a placeholder in capitals aside). A renamed key passes only where the line
  names its new key too (a record of what ran at an old commit)."""
  shown = shown_overrides()
  assert sum(config is not None for _, config, _, _ in shown) >= 50, "the scan found too few commands"
  config_files = sorted(str(p) for p in (ROOT / "configs").glob("*.py") if p.name != "__init__.py")
  problems = []
  for path, config, keys, line in shown:
    if config is not None:
      message = unknown_override([f"--config={ROOT / config}"] + [f"--config.{k}=0" for k in keys])
      problems += [f"{path}: {message}"] if message else []
      continue
    for key in keys:
      if key.isupper() or (key in RENAMED_KEYS and RENAMED_KEYS[key] in line):
        continue
      messages = [unknown_override([f"--config={f}", f"--config.{key}=0"]) for f in config_files]
      if all(messages):
        problems.append(f"{path}: no config file has {key!r}: {messages[0]}")
  assert not problems, "\n".join(problems)


SOURCE = textwrap.dedent('''
    import ml_collections

    def default_config():
      c = ml_collections.ConfigDict()
      c.seed = 0  # the seed
      # the modalities,
      # in two lines
      c.modalities = ml_collections.ConfigDict(dict(image=dict(kind="image")))
      # Optimizer section.
      c.opt = ml_collections.ConfigDict(dict(
          lr=1e-3, warmup=10,  # shared: ambiguous
          # leading comment of b1
          b1=0.9,
          mode="auto",  # first part,
                        # continued
          plain=1,
          multi=(1,  # inside the value
                 2),
      ))
      return c
    ''')


def test_comment_rules():
  meanings, sections = config_reference.meanings(SOURCE)
  assert meanings == {
      "seed": "the seed",
      "modalities": "the modalities, in two lines",
      "opt.b1": "leading comment of b1",
      "opt.mode": "first part, continued",
      "opt.multi": "inside the value",
  }
  assert sections == {"opt": "Optimizer section."}
