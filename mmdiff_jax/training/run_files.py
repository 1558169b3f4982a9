"""A run's files besides checkpoints: metrics.jsonl (one row per logged step) and run.json (the
training budget, machine and source commit behind a run's numbers)."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import sys
import time
import uuid
from typing import Any, Iterator

import jax
import ml_collections
import numpy as np
from etils import epath

from mmdiff_jax.atomic_files import replace_file
from mmdiff_jax.errors import StorageError
from mmdiff_jax.training.dashboard import Dashboard


def _plain(value):
  value = np.asarray(value)
  return value.item() if value.ndim == 0 else value.tolist()


class MetricsWriter:
  """Appends one JSON object per line to WORKDIR/metrics.jsonl (process 0 only; gs:// works too),
  and shows each row's numbers on the dashboard, if given."""

  def __init__(self, workdir: str, dashboard: Dashboard | None = None):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.enabled = jax.process_index() == 0
    self.dashboard = dashboard

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    if self.dashboard is not None:
      self.dashboard.scalars(step, metrics)
    if self.enabled:
      line = json.dumps({"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}) + "\n"
      if "://" in self.path:  # object stores cannot append: rewrite the (small) file
        path = epath.Path(self.path)
        path.write_text((path.read_text() if path.exists() else "") + line)
      else:
        with open(self.path, "a") as f:
          f.write(line)

  def write_evaluation(self, step: int, metrics: dict[str, Any]) -> None:
    """Writes the final evaluation's row of `step` (all of eval_metrics.json's values, which merge
    every evaluation of that step) in place of an earlier one of the same step: a rerun of a
    finished run evaluates again, and the file keeps one such row."""
    path = epath.Path(self.path)
    if self.enabled and path.exists():
      lines = path.read_text().splitlines(keepends=True)
      kept = [line for line in lines if not _is_evaluation_row(line, step)]
      if len(kept) != len(lines):
        replace_file(path, "".join(kept))
    self.write(step, metrics)

  def drop_after(self, step: int) -> str | None:
    """Removes the rows past `step` (written after the checkpoint a run resumes from, so about to be
    written again) and any line a kill cut short; says what it did (None: nothing).

    At step 0 nothing of the earlier rows will be written again (their checkpoints are gone): the
    file is moved aside whole, to metrics.jsonl.earlier (.1, .2, ... if taken)."""
    path = epath.Path(self.path)
    if not self.enabled or not path.exists():
      return None
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if _row_step(line) is not None and _row_step(line) <= step]
    if len(kept) == len(lines):
      return None
    if step == 0:
      target = _move_aside(path)
      return f"metrics.jsonl: an earlier run's rows (from no checkpoint left) moved to {target}"
    replace_file(path, "".join(kept))
    return f"metrics.jsonl: removed the rows past step {step} (they are trained again)"


def _move_aside(path: epath.Path) -> epath.Path:
  """Renames `path` to NAME.earlier (.earlier.1, .2, ... if taken); returns the new path."""
  target, suffix = path.parent / (path.name + ".earlier"), 1
  while target.exists():
    target, suffix = path.parent / f"{path.name}.earlier.{suffix}", suffix + 1
  path.rename(target)
  return target


def set_aside_earlier_results(workdir: str) -> list[str]:
  """For a run that starts at step 0 in a used workdir (its checkpoints moved away): the earlier
  run's run.json and evaluation files (WORKDIR/<metrics name>.json and .bootstrap.json: JSON objects
  with a "step") describe weights that are gone, and would otherwise be merged into the new run's (its
  wall time added, its metrics kept where the step matches). Moves each aside like metrics.jsonl;
  says what moved (process 0 only). Other JSON files (an export's manifest, the user's) stay."""
  if jax.process_index() != 0:
    return []
  moved = []
  for path in sorted(epath.Path(workdir).glob("*.json")):
    if path.name == "run.json" or _is_evaluation_file(path):
      moved.append(f"{path.name}: an earlier run's (from no checkpoint left) moved to "
                   f"{_move_aside(path)}")
  return moved


def _is_evaluation_file(path: epath.Path) -> bool:
  """Whether `path` holds evaluation results (harness.save_eval_metrics: an object with a "step")."""
  try:
    values = json.loads(path.read_text())
  except (OSError, ValueError):
    return False
  return isinstance(values, dict) and "step" in values


def _is_evaluation_row(line: str, step: int) -> bool:
  """Whether `line` is a final evaluation's row (only "eval/..." values) of `step`."""
  try:
    row = json.loads(line)
  except ValueError:
    return False
  return row.get("step") == step and all(k == "step" or k.startswith("eval/") for k in row)


def _row_step(line: str) -> int | None:
  """The step of a metrics.jsonl row; None for a line that is not a complete row."""
  try:
    return int(json.loads(line)["step"])
  except (ValueError, KeyError, TypeError):
    return None


def machine_description() -> dict[str, Any]:
  """What a run's figures were measured on: devices, processes, CPU and versions."""
  cpu = {}
  with contextlib.suppress(OSError):
    with open("/proc/cpuinfo") as f:
      cpu = cpu_fields(f.read())
  described = {"devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
               "processes": jax.process_count(), "host_cpu": cpu.get("model name", ""),
               "host_cores": os.cpu_count(), "jax": jax.__version__,
               "xla_flags": os.environ.get("XLA_FLAGS", "")}
  if "cpu family" in cpu and "model" in cpu:
    # Cloud VMs often name only the vendor line ("AMD EPYC"); family and model tell the generation
    # apart (AMD family 25: model 1 is Zen 3, 17 Zen 4), and it sets a run's speed.
    described["host_cpu_family_model"] = f"{cpu['cpu family']}/{cpu['model']}"
  return described


def cpu_fields(cpuinfo: str) -> dict[str, str]:
  """The first processor's "key: value" lines of /proc/cpuinfo's text."""
  fields = {}
  for line in cpuinfo.split("\n\n")[0].splitlines():
    key, _, value = line.partition(":")
    fields.setdefault(key.strip(), value.strip())
  return fields


def source_commit() -> str:
  """The git commit of the package's source tree ("+dirty" when tracked files differ from it), or
  "unknown" outside a git checkout (an installed wheel)."""
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  git = lambda *args: subprocess.run(["git", "-C", root, *args], capture_output=True, text=True,
                                     timeout=30, check=False)
  try:
    head = git("rev-parse", "HEAD")
    if head.returncode:
      return "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return "unknown"
  return head.stdout.strip() + ("+dirty" if dirty else "")


def _command_line() -> str:
  """The command that is running, as a user would type it (python -m for our entry points)."""
  program = sys.argv[0] if sys.argv else ""
  if program.endswith(os.path.join("mmdiff_jax", "main.py")):
    program = "python3 -m mmdiff_jax.main"
  return " ".join([program, *map(_shell_quote, sys.argv[1:])])


def _shell_quote(arg: str) -> str:
  """shlex.quote, but in double quotes where that reads better: "--x=('a','b')"."""
  quoted = shlex.quote(arg)
  if "'" in arg and quoted != arg and not any(c in arg for c in '"$`\\!'):
    return f'"{arg}"'
  return quoted


def _utc_minute() -> str:
  """Now in UTC to the minute, as run.json's times are written."""
  return time.strftime("%Y-%m-%d %H:%M", time.gmtime())


class RunRecord:
  """WORKDIR/run.json: the training budget behind a run's numbers (steps, batch, wall time summed
  over resumed invocations, machine). RESULTS.md is generated from it and eval_metrics.json.

  Every invocation that trains is recorded when it starts and updated at each logged step, so one
  that is killed still counts up to its last logged step (its "outcome" then says so).
  """

  def __init__(self, workdir: str, config: ml_collections.ConfigDict):
    self.path = epath.Path(workdir) / "run.json"
    self.enabled = jax.process_index() == 0
    self.record = json.loads(self.path.read_text()) if self.path.exists() else {
        "train_wall_s": 0.0, "invocations": []}
    for invocation in self.record["invocations"]:
      if invocation.get("outcome") == "running":  # the workdir lock rules out a live one
        invocation["outcome"] = "ended at its last logged step (killed or failed)"
    self.record.update(batch_size=int(config.training.batch_size),
                       num_steps=int(config.training.num_steps), command=_command_line())
    self.commit = source_commit()
    self.wall_before = float(self.record["train_wall_s"])  # earlier invocations' training time

  def start(self, *, first_step: int) -> None:
    self.record["invocations"].append({
        "steps": [first_step, first_step], "wall_s": 0.0,
        "started_utc": _utc_minute(), "commit": self.commit,
        "outcome": "running", **machine_description()})
    self.update(last_step=first_step, wall_s=0.0)

  def update(self, *, last_step: int, wall_s: float, outcome: str | None = None) -> None:
    """The current invocation reached `last_step` after `wall_s` seconds (ended: `outcome`)."""
    invocation = self.record["invocations"][-1]
    invocation.update(steps=[invocation["steps"][0], last_step], wall_s=round(wall_s, 1),
                      finished_utc=_utc_minute())
    if outcome:
      invocation["outcome"] = outcome
    self.record.update(train_wall_s=self.wall_before + wall_s, steps_done=last_step,
                       commit=self.commit)
    self._write()

  @contextlib.contextmanager
  def noting_errors(self) -> Iterator[None]:
    """An error that ends the block (a bug, a user error, Ctrl-C) ends the current invocation: its
    outcome names the error, unless it already has one; its steps stay those of the last logged step."""
    try:
      yield
    except BaseException as error:
      self._end_with(error)
      raise

  def _write(self) -> None:
    if self.enabled:
      replace_file(self.path, json.dumps(self.record, indent=1))

  def _end_with(self, error: BaseException) -> None:
    invocation = (self.record["invocations"] or [{}])[-1]
    if invocation.get("outcome") != "running":
      return
    if isinstance(error, KeyboardInterrupt):
      outcome = "interrupted (Ctrl-C)"
    else:
      first_line = (str(error).splitlines() or [""])[0][:300]
      outcome = f"failed: {type(error).__name__}" + (f": {first_line}" if first_line else "")
    invocation.update(outcome=outcome, finished_utc=_utc_minute())
    self._write()


def check_writable(workdir: str) -> None:
  """Fails early, naming the workdir, if checkpoints and metrics cannot be written there."""
  # A name of its own: two runs started together must each find their probe (the lock comes later).
  probe = epath.Path(workdir) / f".write_probe_{jax.process_index()}_{os.getpid()}_{uuid.uuid4().hex}"
  try:
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    raise StorageError(f"--workdir={workdir} is not writable ({e.strerror}); checkpoints, metrics "
                       f"and samples go there. Choose another --workdir.") from e
