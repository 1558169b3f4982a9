"""Every command the repository shows a user (the docs, the launch and CI scripts, the notebooks, the
docstrings of configs and entry points) passes flags its module defines and config keys its config
has: a renamed key or flag in a shown command fails the user who copies it. (`.ci/python312` once
passed sampling.num_steps, renamed to sampling.sampler_steps, and stopped at its first command.)

Lines are read as text; a shell line continued with a trailing backslash counts as one."""

from __future__ import annotations

import functools
import pathlib
import re

from mmdiff_jax.command_line import unknown_override
from mmdiff_jax.config import RENAMED_KEYS

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMMAND_FILES = ("*.md", "docs/*.md", "results/**/*.md", "launch/*", ".ci/*", "notebooks/*.ipynb",
                 "configs/*.py", "mmdiff_jax/**/*.py", "benchmarks/*.py", "benchmarks/*.sh")
# absl's own flags, which every absl entry point accepts.
ABSL_FLAGS = {"help", "helpfull", "helpshort", "verbosity", "v", "logtostderr", "alsologtostderr"}
# `python3 -m MODULE` and what follows it on the line: flags (values quoted or not) and positional
# words, up to the end of the command (a pipe, a redirection, a closing backtick or parenthesis).
_COMMAND = re.compile(r"python3? -m ((?:mmdiff_jax|benchmarks)[\w.]*)"
                      r"((?:[ \t]+(?:--[\w.]+(?:=(?:\"[^\"]*\"|'[^']*'|[^\s`]+))?"
                      r"|[^\s|;&`)<>-][^\s|;&`)<>]*))*)")


def shown_lines(root: pathlib.Path = ROOT):
  """(path relative to `root`, line) for every line of the files commands are shown in."""
  for pattern in COMMAND_FILES:
    for path in sorted(root.glob(pattern)):
      if path.is_file():
        for line in path.read_text().replace("\\\n", " ").splitlines():
          yield path.relative_to(root), line


@functools.cache  # one read of each module's source, however many flags are shown for it
def defined_flags(module: str) -> frozenset[str]:
  """The flags `module`'s file defines: absl's DEFINE_*("name", ...) and argparse's
  add_argument("--name", ...)."""
  path = ROOT / (module.replace(".", "/") + ".py")
  if not path.is_file():  # a package run as a program
    path = ROOT / module.replace(".", "/") / "__main__.py"
  text = path.read_text()
  absl = re.findall(r"DEFINE_\w+\(\s*[\"'](\w+)[\"']", text)
  argparse = re.findall(r"add_argument\(\s*(?:[\"']-\w[\"'],\s*)?[\"']--(\w+)[\"']", text)
  return frozenset(absl + argparse)


def test_every_override_shown_to_users_names_a_key_of_its_config():
  """With the command's config file on the line, the entry point's own check; otherwise some config
  file must have the key (a placeholder in capitals aside). A renamed key passes only where the line
  names its new key too (a record of what ran at an old commit)."""
  config_files = sorted(str(p) for p in (ROOT / "configs").glob("*.py") if p.name != "__init__.py")
  problems, commands = [], 0
  for path, line in shown_lines():
    keys = re.findall(r"--config\.([A-Za-z_][\w.]*)=", line)
    config = re.search(r"--config=(configs/[\w./]+\.py(?::\w+)?)", line)
    if keys and config:
      commands += 1
      message = unknown_override([f"--config={ROOT / config.group(1)}"] +
                                 [f"--config.{k}=0" for k in keys])
      problems += [f"{path}: {message}"] if message else []
      continue
    for key in keys:
      if key.isupper() or (key in RENAMED_KEYS and RENAMED_KEYS[key] in line):
        continue
      messages = [unknown_override([f"--config={f}", f"--config.{key}=0"]) for f in config_files]
      if all(messages):
        problems.append(f"{path}: no config file has {key!r}: {messages[0]}")
  assert commands >= 50, f"the scan found only {commands} commands with overrides"
  assert not problems, "\n".join(problems)


def test_every_flag_shown_to_users_is_defined_by_its_module():
  problems, flags_seen = [], 0
  for path, line in shown_lines():
    for command in _COMMAND.finditer(line):
      module, rest = command.group(1), re.sub(r"=(\"[^\"]*\"|'[^']*'|\S+)", "", command.group(2))
      for flag in re.findall(r"(?<![\w-])--([A-Za-z_]\w*)", rest):
        flags_seen += 1
        if flag not in defined_flags(module) | ABSL_FLAGS:
          problems.append(f"{path}: python3 -m {module} --{flag}: {module} defines no such flag")
  assert flags_seen >= 100, f"the scan found only {flags_seen} flags"
  assert not problems, "\n".join(problems)


def test_the_scans_find_a_stale_key_and_a_stale_flag(tmp_path):
  """The checks above can fail: a shown command with a renamed key and an unknown flag."""
  (tmp_path / "README.md").write_text(
      "python3 -m mmdiff_jax.main --config=configs/imglabel.py:smoke --workdir=w \\\n"
      "  --config.sampling.num_steps=2 --no_such_flag\n")
  [(path, line)] = shown_lines(tmp_path)
  assert str(path) == "README.md" and "--workdir=w    --config.sampling.num_steps=2" in line
  assert "is now 'sampling.sampler_steps'" in unknown_override(
      [f"--config={ROOT}/configs/imglabel.py:smoke", "--config.sampling.num_steps=2"])
  [command] = _COMMAND.finditer(line)
  assert command.group(1) == "mmdiff_jax.main" and command.group(2).endswith("--no_such_flag")
  assert "no_such_flag" not in defined_flags("mmdiff_jax.main")
  assert {"workdir", "config", "mode", "params"} <= defined_flags("mmdiff_jax.main")
