"""Entry point: python -m mmdiff_jax.main --config=configs/imglabel.py[:variant] --workdir=DIR [--mode=...]

  --mode=train   (default) train, resuming from the newest checkpoint in the workdir, then sample and
                 evaluate.
  --mode=sample  load the newest checkpoint and write sample grids to WORKDIR/samples.
Any config key can be overridden: --config.training.num_steps=500.
"""

import os

import jax
from absl import app, flags
from ml_collections import config_flags

from mmdiff_jax.training import distributed, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (path[:variant]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")
flags.DEFINE_enum("mode", "train", ["train", "sample"], "What to do.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # First of all: with several processes (TPU pod, SLURM, launch/local_multiprocess.sh) the
  # distributed runtime must start before anything touches a JAX backend.
  print(distributed.initialize(FLAGS.config.get("distributed")).describe(), flush=True)
  # Reruns (resume, --mode=sample) reuse compiled programs; JAX_COMPILATION_CACHE_DIR overrides.
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir",
                      os.path.join(os.path.expanduser("~"), ".cache", "mmdiff_jax", "xla"))
  if FLAGS.mode == "train":
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  else:
    train.sample_from_checkpoint(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
