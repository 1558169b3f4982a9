"""Records found by their name: each defined in its own file of one package folder, or registered at
run time.

The library's extension points (modality kinds, evaluators) are such folders: `get("depth")` imports
`<package>.depth` and reads its record (`KIND`, `EVALUATOR`), so adding one is adding a file, and a
record defined elsewhere (a notebook, a test) is added with `register`. A file whose name starts with
"_" is not a record (a helper the records share).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Iterable

from mmdiff_jax.errors import BadValueError


class FolderRegistry:
  """The records of one package folder (each has a `name`), and those registered."""

  def __init__(self, package: str, path: Iterable[str], *, attribute: str, record_type: type,
               what: str):
    """package, path: the folder's module name and `__path__`; attribute: the name of the record in
    each file; record_type: its class; what: what a record is, for messages ("modality kind")."""
    self.registered: dict[str, Any] = {}
    self._package, self._attribute, self._record_type, self._what = (
        package, attribute, record_type, what)
    self._builtin = tuple(sorted(m.name for m in pkgutil.iter_modules(path)
                                 if not m.name.startswith("_")))
    self._loaded: dict[str, Any] = {}

  def register(self, record):
    """Makes `record` known by its name; returns it."""
    self.registered[record.name] = record
    return record

  def builtin_names(self) -> list[str]:
    """The names of the folder's files."""
    return list(self._builtin)

  def names(self) -> list[str]:
    return sorted(set(self._builtin) | set(self.registered))

  def _from_file(self, name: str):
    if name not in self._loaded:
      module = importlib.import_module(f"{self._package}.{name}")
      record = getattr(module, self._attribute, None)
      if not isinstance(record, self._record_type):
        raise BadValueError(f"{module.__file__} defines no {self._attribute} (an "
                            f"instance of {self._record_type.__name__}); a file of this folder that is "
                            f"not one takes a name starting with '_'")
      if record.name != name:
        raise ValueError(f"{self._package}.{name}.{self._attribute} is named {record.name!r}; "
                         f"expected {name!r}")
      self._loaded[name] = record
    return self._loaded[name]

  def get(self, name: str):
    """The record called `name`: registered, or the one of the folder's file `name`.py.

    Raises:
      BadValueError naming the known records.
    """
    if name in self.registered:
      return self.registered[name]
    if not isinstance(name, str) or name not in self._builtin:
      folder = self._package.replace(".", "/")
      raise BadValueError(f"unknown {self._what} {name!r}; expected one of {self.names()} (a new "
                          f"{self._what} is a file {folder}/<name>.py defining {self._attribute}, "
                          f"or {self._package.rsplit('.', 1)[-1]}.register)")
    return self._from_file(name)
