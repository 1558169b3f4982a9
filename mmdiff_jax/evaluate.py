"""Evaluates the newest checkpoint of a run: python -m mmdiff_jax.evaluate --config=... --workdir=...

Runs every evaluator (mmdiff_jax/evaluation/evaluators/) that applies to the experiment but the costly
ones that run only when named (or those named with --evaluators) and writes WORKDIR/eval_metrics.json
(bootstrap replicates beside it, in eval_metrics.bootstrap.json). `--library_logs` shows the INFO logs
of the libraries underneath.
"""

import json
import sys

from mmdiff_jax import tcmalloc

if __name__ == "__main__":
  tcmalloc.rerun_with_tcmalloc()  # first, before JAX loads: the allocator (see tcmalloc.py)

import jax
from absl import app, flags
from ml_collections import config_flags

from mmdiff_jax import command_line, console, installed_configs
from mmdiff_jax.data import sources
from mmdiff_jax.errors import BadValueError
from mmdiff_jax.evaluation import evaluators as evaluators_lib
from mmdiff_jax.evaluation.harness import BOOTSTRAP_KEY, save_eval_metrics
from mmdiff_jax.experiment import build_experiment
from mmdiff_jax.training import distributed
from mmdiff_jax.training.restore import classifier_for, restore_latest

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (path[:variant]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "The training run's directory.")
flags.DEFINE_list("evaluators", None, "Evaluators to run (default: every one that applies, but "
                  "those that run only when named, such as label_accuracy_by_bound); each "
                  "named must apply to the experiment.")
flags.DEFINE_string("metrics_name", "eval_metrics",
                    "Write WORKDIR/<name>.json (and <name>.bootstrap.json): another name keeps the "
                    "main file as it is, e.g. for the same metrics at another eval.sampler_steps.")
flags.mark_flags_as_required(["config", "workdir"])


def evaluate(config, workdir: str, evaluators=None, *, metrics_name: str = "eval_metrics") -> dict:
  """Restores the newest checkpoint's EMA parameters, runs the evaluators (None: every one that
  applies but those only_when_named; named ones must apply), merges their metrics into
  WORKDIR/<metrics_name>.json (those of other evaluators at the same step are kept) and their
  bootstrap replicates into WORKDIR/<metrics_name>.bootstrap.json; returns this call's metrics."""
  if evaluators is not None:
    _check_evaluators(tuple(evaluators), config)
  experiment, step, state = restore_latest(config, workdir)  # first: no checkpoint, nothing to read
  sources.check_splits(config.data, ("eval_split",))
  results = {"step": step, **evaluators_lib.run_evaluators(
      experiment, state.ema_params, config, evaluators, classify=classifier_for(config, experiment),
      show_progress=True)}
  save_eval_metrics(workdir, step, results, name=metrics_name)
  results.pop(BOOTSTRAP_KEY, None)  # in WORKDIR/<metrics_name>.bootstrap.json
  if jax.process_index() == 0:
    print(json.dumps(results, indent=1), flush=True)
  return results


def _check_evaluators(names: tuple[str, ...], config) -> None:
  """Raises ValueError when `names` is empty, unknown, or names one that does not apply to the
  experiment (which would otherwise be left out without a word)."""
  known = evaluators_lib.names()
  if not names or set(names) - set(known):
    raise BadValueError(f"--evaluators: got {list(names)}; expected names from {known}")
  applicable = evaluators_lib.applicable(build_experiment(config))
  not_applicable = [name for name in names if name not in applicable]
  if not_applicable:
    raise BadValueError(f"--evaluators: {not_applicable} do not apply to this experiment (modalities "
                        f"{sorted(config.modalities)}, task {config.task!r}); those that apply: "
                        f"{applicable}")


def main(argv):
  if len(argv) > 1:
    raise BadValueError(f"unexpected arguments {argv[1:]}: every argument is a --flag=value")
  console.quiet_library_logs()
  print(distributed.initialize(FLAGS.config.get("distributed")).describe(), flush=True)
  evaluate(FLAGS.config, FLAGS.workdir, FLAGS.evaluators, metrics_name=FLAGS.metrics_name)


if __name__ == "__main__":
  app.run(console.exit_on_user_error(main),
          argv=console.exit_on_user_error(installed_configs.with_installed_configs)(sys.argv),
          flags_parser=command_line.parse_flags)
