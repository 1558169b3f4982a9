"""Entry point: python -m mmdiff_jax.main --config=configs/imglabel.py[:variant] --workdir=DIR [--mode=...]

  --mode=train   (default) train, resuming from the newest checkpoint in the workdir, then sample and
                 evaluate.
  --mode=sample  load the newest checkpoint (or with --params=FILE an exported file) and write sample
                 grids to WORKDIR/samples; with --num_samples=N instead N samples for external
                 metrics (.npz and/or a PNG folder, joint or given --sample_labels; see
                 mmdiff_jax/sampling/sample_export.py).
  --mode=export  write the newest checkpoint's EMA parameters alone to
                 WORKDIR/export/ema_params_step<N>.msgpack (flax.serialization).
  --library_logs show the INFO logs of the libraries underneath (orbax, absl, TFDS, grain); by default
                 only their warnings and errors are shown, beside the run's own progress lines.
Any config key can be overridden: --config.training.num_steps=500.
`--config=configs/NAME.py` finds the configs installed with the package when there is no such file
here (mmdiff_jax/installed_configs.py).
"""

import os
import sys

from mmdiff_jax import tcmalloc

if __name__ == "__main__":
  tcmalloc.rerun_with_tcmalloc()  # first, before JAX loads: the step's allocator (see tcmalloc.py)

import jax
from absl import app, flags
from ml_collections import config_flags

from mmdiff_jax import command_line, console, installed_configs
from mmdiff_jax.errors import BadValueError
from mmdiff_jax.sampling import sample_export
from mmdiff_jax.training import distributed, train
from mmdiff_jax.training import params_export

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (path[:variant]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")
flags.DEFINE_enum("mode", "train", ["train", "sample", "export"], "What to do.")
flags.DEFINE_string("params", None, "--mode=sample: an exported parameter file (--mode=export) to "
                    "sample from instead of the newest checkpoint.")
flags.DEFINE_integer("num_samples", 0, "--mode=sample: write this many samples for external "
                     "metrics instead of grids (0: grids).")
flags.DEFINE_list("sample_format", list(sample_export.FORMATS), "With --num_samples: npz and/or png.")
flags.DEFINE_string("sample_labels", "", "With --num_samples: '' joint samples; 'balanced' or "
                    "class ids '3' / '0,1,2' (cycled) to sample given labels.")
flags.DEFINE_string("sample_dir", None, "With --num_samples: output folder (default "
                    "WORKDIR/samples/export_step<step>, or export_step<step>_given_<labels>).")
flags.mark_flags_as_required(["config", "workdir"])


def check_sample_flags() -> None:
  """A flag the chosen mode would ignore is an error, not a silent no-op."""
  for_sample = ("params", "num_samples")
  with_num_samples = ("sample_labels", "sample_dir", "sample_format")
  given = [name for name in for_sample + with_num_samples if FLAGS[name].present]
  if FLAGS.mode != "sample" and given:
    raise BadValueError(f"--{given[0]} is for --mode=sample (given --mode={FLAGS.mode})")
  given = [name for name in with_num_samples if FLAGS[name].present]
  if given and not FLAGS.num_samples:
    raise BadValueError(f"--{given[0]} is for --num_samples=N (the samples for external metrics); "
                        f"without it --mode=sample writes grids")


def main(argv):
  if len(argv) > 1:
    raise BadValueError(f"unexpected arguments {argv[1:]}: every argument is a --flag=value")
  console.quiet_library_logs()
  # First of all: with several processes (TPU pod, SLURM, launch/local_multiprocess.sh) the
  # distributed runtime must start before anything touches a JAX backend.
  print(distributed.initialize(FLAGS.config.get("distributed")).describe(), flush=True)
  if jax.default_backend() == "cpu" and (hint := tcmalloc.missing_hint()):
    print(hint, flush=True)
  # Reruns (resume, --mode=sample) reuse compiled programs; JAX_COMPILATION_CACHE_DIR overrides.
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir",
                      os.path.join(os.path.expanduser("~"), ".cache", "mmdiff_jax", "xla"))
  check_sample_flags()
  if FLAGS.mode == "train":
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  elif FLAGS.mode == "export":
    print(f"Wrote {params_export.export_ema_params(FLAGS.config, FLAGS.workdir)}", flush=True)
  elif FLAGS.num_samples:
    paths = sample_export.export_samples(
        FLAGS.config, FLAGS.workdir, num_samples=FLAGS.num_samples, formats=FLAGS.sample_format,
        labels=FLAGS.sample_labels, out_dir=FLAGS.sample_dir, params_path=FLAGS.params)
    print(f"Wrote {paths}", flush=True)
  elif FLAGS.params:
    params_export.sample_from_exported(FLAGS.config, FLAGS.params, FLAGS.workdir)
  else:
    train.sample_from_checkpoint(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(console.exit_on_user_error(main),
          argv=console.exit_on_user_error(installed_configs.with_installed_configs)(sys.argv),
          flags_parser=command_line.parse_flags)
