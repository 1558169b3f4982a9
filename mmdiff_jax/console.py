"""What the command-line entry points print: their own lines, not the INFO logs underneath.

orbax alone writes about 25 INFO lines per checkpoint opened or saved, which would bury the progress
lines and results; `--library_logs` shows them (absl, orbax, TFDS, grain) again.
"""

from absl import flags, logging

flags.DEFINE_bool("library_logs", False, "Show the INFO logs of orbax, absl, TFDS and grain.")


def quiet_library_logs() -> None:
  """Unless --library_logs was given, keeps only the warnings and errors of absl's logging (which
  orbax, TFDS and grain log through). Call it first thing in an entry point's main()."""
  if not flags.FLAGS.library_logs:
    logging.set_verbosity(logging.WARNING)
