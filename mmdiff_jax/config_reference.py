"""The config reference: every key of `default_config()` with its default and meaning, as Markdown.

    python3 -m mmdiff_jax.config_reference > docs/CONFIG.md

The meanings are the comments next to the keys in mmdiff_jax/config.py (read with `ast` and
`tokenize`, never written by hand), so the reference cannot drift from the code:

- a trailing comment on the line of a key is its meaning; comment-only lines right after it continue
  it; a comment-only line right before a key (with no trailing comment on the line above) is its
  meaning too;
- a comment on a line shared by several keys belongs to none of them (it is ambiguous): put each
  key on its own line;
- the comment block right above a section (`c.eval = ...`) describes the section.

Keys without a meaning are listed on stderr (and by `undocumented_keys()`), and left blank in the
table: nothing is made up. The per-modality keys (`config.modalities.<name>.*`) come from the
`ModalitySpec` docstring in mmdiff_jax/models/modalities.py.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import re
import sys
import tokenize

import ml_collections

from mmdiff_jax import config as config_lib
from mmdiff_jax.models import kinds
from mmdiff_jax.models import modalities as modalities_lib

FUNCTION = "default_config"


@dataclasses.dataclass
class _Key:
  name: str  # dotted
  first_line: int
  last_line: int


def _comments(source: str) -> tuple[dict[int, str], set[int]]:
  """({line: comment text}, lines that hold only a comment)."""
  comments, lines_with_code = {}, set()
  for tok in tokenize.generate_tokens(io.StringIO(source).readline):
    if tok.type == tokenize.COMMENT:
      comments[tok.start[0]] = tok.string.lstrip("#").strip()
    elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                          tokenize.ENDMARKER):
      lines_with_code.update(range(tok.start[0], tok.end[0] + 1))
  return comments, set(comments) - lines_with_code


def _section_items(value: ast.expr) -> list[tuple[str, ast.AST]] | None:
  """(key, node) of `ConfigDict(dict(k=v, ...))` / `ConfigDict({"k": v})`; None if not a section."""
  if not (isinstance(value, ast.Call) and ast.unparse(value.func).endswith("ConfigDict")):
    return None
  if not value.args:
    return []
  inner = value.args[0]
  if isinstance(inner, ast.Call) and ast.unparse(inner.func) == "dict":
    return [(kw.arg, kw) for kw in inner.keywords]
  if isinstance(inner, ast.Dict):
    return [(ast.literal_eval(k), ast.Tuple(elts=[k, v], ctx=ast.Load(), lineno=k.lineno,
                                            end_lineno=v.end_lineno))
            for k, v in zip(inner.keys, inner.values)]
  return None


def _parse(source: str) -> tuple[list[_Key], dict[str, tuple[int, int]], tuple[int, int]]:
  """The keys of `default_config` in source order, the sections' statement lines, and the
  function body's line range."""
  tree = ast.parse(source)
  function = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == FUNCTION)
  keys, sections = [], {}
  for statement in function.body:
    if not isinstance(statement, ast.Assign) or len(statement.targets) != 1:
      continue
    target = statement.targets[0]
    if not (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)):
      continue
    items = _section_items(statement.value)
    if items is None or target.attr == "modalities":  # modalities: one free-form key
      keys.append(_Key(target.attr, statement.lineno, statement.end_lineno))
      continue
    sections[target.attr] = (statement.lineno, statement.end_lineno)
    for name, node in items:
      keys.append(_Key(f"{target.attr}.{name}", node.lineno, node.end_lineno))
  return keys, sections, (function.body[0].lineno, function.end_lineno)


def meanings(source: str | None = None) -> tuple[dict[str, str], dict[str, str]]:
  """({dotted key: meaning}, {section: description}) from the comments of `default_config` in
  `source` (default: mmdiff_jax/config.py).

  A key whose comment is missing or ambiguous is absent from the first dict.
  """
  source = inspect.getsource(config_lib) if source is None else source
  comments, comment_only = _comments(source)
  keys, sections, (body_start, _) = _parse(source)
  owners: dict[int, list[str]] = {}  # line -> keys whose span covers it
  for key in keys:
    for line in range(key.first_line, key.last_line + 1):
      owners.setdefault(line, []).append(key.name)

  result: dict[str, list[str]] = {}
  for key in keys:
    parts = [comments[line] for line in range(key.first_line, key.last_line + 1)
             if line in comments and line not in comment_only and owners[line] == [key.name]]
    if parts:  # continuation lines: comment-only lines right after a commented key
      line = key.last_line + 1
      while line in comment_only and _continues(source, line, key):
        parts.append(comments[line])
        line += 1
    else:  # comment-only lines right above the key
      line = key.first_line - 1
      above = []
      while line in comment_only and line >= body_start:
        above.insert(0, comments[line])
        line -= 1
      # ... unless it is the wrapped continuation of the trailing comment on the line above it
      continuation = (line in comments and line not in comment_only
                      and _indent(source, line + 1) > _indent(source, line))
      if above and not continuation:
        parts = above
    if parts:
      result[key.name] = parts
  descriptions = {}
  for section, (first, _) in sections.items():
    line, block = first - 1, []
    while line in comment_only and line >= body_start:
      block.insert(0, comments[line])
      line -= 1
    trailing = comments.get(first) if first in comments and owners.get(first) is None else None
    if block or trailing:
      descriptions[section] = " ".join(block + ([trailing] if trailing else []))
  return {k: " ".join(v) for k, v in result.items()}, descriptions


def _indent(source: str, line: int) -> int:
  text = source.splitlines()[line - 1]
  return len(text) - len(text.lstrip())


def _continues(source: str, line: int, key: _Key) -> bool:
  """Whether comment-only `line` is indented deeper than the key's line (a wrapped comment)."""
  return _indent(source, line) > _indent(source, key.first_line)


def flat_defaults(config: ml_collections.ConfigDict | None = None) -> dict[str, object]:
  """{dotted key: default} of every key (modalities as one key), in config.py's source order."""
  config = config_lib.default_config() if config is None else config
  values = {}
  for name, value in config.items():
    if isinstance(value, ml_collections.ConfigDict) and name != "modalities":
      for key, sub in value.items():
        values[f"{name}.{key}"] = sub  # sections are one level deep
    else:
      values[name] = value
  keys, _, _ = _parse(inspect.getsource(config_lib))
  order = [key.name for key in keys if key.name in values]
  return {key: values[key] for key in order + sorted(set(values) - set(order))}


def undocumented_keys() -> list[str]:
  """Keys of `default_config()` that have no meaning in config.py's comments."""
  known, _ = meanings()
  return [key for key in flat_defaults() if key not in known]


def _format_default(value) -> str:
  if isinstance(value, ml_collections.FieldReference):
    value = value.get()
  if isinstance(value, ml_collections.ConfigDict):
    value = value.to_dict()
  if isinstance(value, float) and value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
    text = f"{value:g}"
  elif isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10_000:
    text = f"{value:_}"
  else:
    text = repr(value)
  return f"`{text}`"


def _cell(text: str) -> str:
  return text.replace("|", "\\|").replace("\n", " ")


def _modality_fields() -> list[tuple[str, str, str]]:
  """(field, default, meaning) of config.modalities.<name>.* from ModalitySpec's docstring."""
  doc = inspect.getdoc(modalities_lib.ModalitySpec) or ""
  attributes = doc.split("Attributes:", 1)[1] if "Attributes:" in doc else ""
  entries: dict[str, str] = {}
  current = None
  for line in attributes.splitlines():
    match = re.match(r"^\s{2}([a-z_, ]+):\s*(.*)$", line)
    if match:
      current = [name.strip() for name in match.group(1).split(",")]
      for name in current:
        entries[name] = match.group(2).strip()
    elif current and line.strip():
      for name in current:
        entries[name] += " " + line.strip()
  rows = []
  defaults = {f.name: f.default for f in dataclasses.fields(modalities_lib.ModalitySpec)}
  for name, meaning in entries.items():
    if name == "name":
      continue
    default = defaults.get(name, dataclasses.MISSING)
    if name == "encoder":
      shown = "by kind"
    elif name == "feature":
      shown = "the modality's name"
    elif default is dataclasses.MISSING:
      shown = "required"
    else:
      shown = _format_default(default)
    rows.append((name, shown, meaning))
  return rows


def generate() -> str:
  """The Markdown reference (docs/CONFIG.md)."""
  known, descriptions = meanings()
  defaults = flat_defaults()
  lines = [
      "# Config reference",
      "",
      "<!-- Generated by `python3 -m mmdiff_jax.config_reference > docs/CONFIG.md` from",
      "     mmdiff_jax/config.py; do not edit by hand (tests/test_config_reference.py checks it). -->",
      "",
      "Every key of `mmdiff_jax.config.default_config()` with its default (sized for one accelerator;",
      "`apply_size` in mmdiff_jax/config.py gives the `:smoke` and `:small` sizes) and its meaning.",
      "Override any key on the command line, e.g. `--config.training.num_steps=500`.",
      "",
  ]
  groups: dict[str | None, list[str]] = {None: []}  # top-level keys first, then each section
  for key in defaults:
    groups.setdefault(key.split(".")[0] if "." in key else None, []).append(key)
  for head, keys in groups.items():
    lines += ["## Top level" if head is None else f"## `{head}`", ""]
    if head in descriptions:
      lines += [descriptions[head], ""]
    lines += ["| key | default | meaning |", "|---|---|---|"]
    for key in keys:
      lines.append(f"| `{key}` | {_cell(_format_default(defaults[key]))} | "
                   f"{_cell(known.get(key, ''))} |")
    lines.append("")
  lines += [
      "## `modalities.<name>.*`",
      "",
      "Each entry of `config.modalities` is one modality (see mmdiff_jax/models/modalities.py).",
      "Its `kind` is a file of mmdiff_jax/models/kinds/ (a new kind is a new file there); per",
      "kind, the encoders (the first is the default), the head and the recovery loss:",
      "",
      "| kind | encoder | head | recovery loss | needs |",
      "|---|---|---|---|---|",
  ]
  for name in kinds.builtin_names():
    kind = kinds.get(name)
    loss = kind.recovery_nll.__name__ if kind.recovery_nll else "none (the base)"
    lines.append(f"| `{name}` | " + ", ".join(f"`{e}`" for e in kind.encoders)
                 + f" | `{kind.head.__name__}` | `{loss}` | "
                 + (", ".join(f"`{r}`" for r in kind.required) or "-") + " |")
  lines += ["", "| key | default | meaning |", "|---|---|---|"]
  for name, default, meaning in _modality_fields():
    lines.append(f"| `{name}` | {_cell(default)} | {_cell(meaning)} |")
  lines.append("")
  return "\n".join(lines)


def main() -> int:
  missing = undocumented_keys()
  sys.stdout.write(generate())
  if missing:
    print(f"config_reference: {len(missing)} key(s) have no comment in mmdiff_jax/config.py "
          f"(blank in the table): {', '.join(missing)}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
