"""Errors in what a user gave: a config value, a flag, a file, a dataset, a workdir.

Their messages name the offending key, value or file and what was expected, so the entry points
print them as one line (`console.exit_on_user_error`), not as a traceback. Any other exception is a
bug, and keeps its traceback. Each class is also the builtin a caller would catch (ValueError,
FileNotFoundError, OSError, FloatingPointError, RuntimeError).
"""


class UserError(Exception):
  """Marks an error in the user's input, whose message says what to change."""


class BadValueError(UserError, ValueError):
  """A config value, flag value or data value that cannot be used."""


class MissingFileError(UserError, FileNotFoundError):
  """A file or folder the user pointed to (or that a run needs in the workdir) is not there."""


class StorageError(UserError, OSError):
  """Reading or writing the user's files failed in a way the message explains (disk full, damage)."""


class DivergedError(UserError, FloatingPointError):
  """Training stopped on non-finite values; the message names the settings to change."""


class BusyError(UserError, RuntimeError):
  """Something the user started (another run on the same workdir) is in the way."""
