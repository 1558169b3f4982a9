"""docs/CONFIG.md is the generated config reference, and every config key has a meaning."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import textwrap

from mmdiff_jax import config_reference

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
