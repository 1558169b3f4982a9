"""What the command-line entry points print: their own lines, not the INFO logs underneath.

orbax alone writes about 25 INFO lines per checkpoint opened or saved, which would bury the progress
lines and results; `--library_logs` shows them (absl, orbax, TFDS, grain) again.
"""

import functools
import os
import sys
from typing import Any, Callable

from absl import flags, logging

from mmdiff_jax.errors import UserError

TRACEBACK_ENV = "MMDIFF_JAX_TRACEBACK"

flags.DEFINE_bool("library_logs", False, "Show the INFO logs of orbax, absl, TFDS and grain.")


def quiet_library_logs() -> None:
  """Unless --library_logs was given, keeps only the warnings and errors of absl's logging (which
  orbax, TFDS and grain log through). Call it first thing in an entry point's main()."""
  if not flags.FLAGS.library_logs:
    logging.set_verbosity(logging.WARNING)


def exit_on_user_error(main: Callable[[list[str]], Any]) -> Callable[[list[str]], Any]:
  """A function of the command line (an entry point's `main` for absl's `app.run`, or what rewrites
  its arguments first), but an error in the user's input (`mmdiff_jax.errors.UserError`, whose
  message names what to change) ends the program with that message as one line on stderr and exit
  status 1, not a traceback; Ctrl-C that reaches it (training saves and exits on the first one
  instead) ends it with one line and status 130, the shell's for SIGINT. Any other exception is a
  bug and keeps its traceback; so do a user error and Ctrl-C when $MMDIFF_JAX_TRACEBACK=1."""
  @functools.wraps(main)
  def main_printing_user_errors(argv: list[str]) -> Any:
    try:
      return main(argv)
    except UserError as error:
      if os.environ.get(TRACEBACK_ENV) == "1":
        raise
      print(f"FATAL {error}", file=sys.stderr, flush=True)
      sys.exit(1)
    except KeyboardInterrupt:
      if os.environ.get(TRACEBACK_ENV) == "1":
        raise
      print("Interrupted (Ctrl-C).", file=sys.stderr, flush=True)
      sys.exit(130)
  return main_printing_user_errors
