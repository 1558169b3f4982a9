"""The package's import structure: no import cycles (counting imports inside functions too), and config
files that load without the machine-learning stack."""

from __future__ import annotations

import ast
import io
import pathlib
import subprocess
import sys
import tokenize

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mmdiff_jax"


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path, modules: set[str]) -> set[str]:
  """The package modules `path` imports, at module level or inside functions."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names if alias.name in modules)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      # "from a.b import c": the module a.b.c where there is one, else the name c of module a.b.
      for alias in node.names:
        submodule = f"{node.module}.{alias.name}"
        found.add(submodule if submodule in modules else node.module)
  found &= modules
  return found


def _graph() -> dict[str, set[str]]:
  paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
  modules = set(paths)
  return {name: _imports(path, modules) - {name} for name, path in paths.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import cycle as a list of modules, or None."""
  state: dict[str, str] = {}
  stack: list[str] = []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph[node]):
      if state.get(nxt) == "open":
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        found = visit(nxt)
        if found:
          return found
    stack.pop()
    state[node] = "done"
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


def test_cycle_finder_finds_a_cycle():
  assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycles_in_the_package():
  graph = _graph()
  assert "mmdiff_jax.training.train" in graph and graph["mmdiff_jax.training.train"]
  assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph))}"


def test_config_module_imports_nothing_from_the_package_but_its_errors():
  graph = _graph()
  assert graph["mmdiff_jax.config"] == {"mmdiff_jax.errors"}
  assert graph["mmdiff_jax.errors"] == set()


def test_config_files_load_without_the_ml_stack():
  code = ("import sys; import configs.imglabel as c; c.get_config('small'); "
          "print(sorted(m for m in ('jax', 'flax', 'optax', 'orbax', 'grain', 'tensorflow_datasets') "
          "if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       check=True).stdout
  assert out.strip() == "[]", out


def _indent_steps(source: str) -> set[int]:
  """The widths by which blocks indent in `source` (one style: every block 2 spaces deeper)."""
  widths, steps = [0], set()
  for token in tokenize.generate_tokens(io.StringIO(source).readline):
    if token.type == tokenize.INDENT:
      steps.add(len(token.string.expandtabs(8)) - widths[-1])
      widths.append(len(token.string.expandtabs(8)))
    elif token.type == tokenize.DEDENT:
      widths.pop()
  return steps


def test_one_indentation_style():
  assert _indent_steps("def f():\n    return 1\n") == {4}
  files = [p for folder in ("mmdiff_jax", "tests", "configs", "benchmarks", "notebooks", "launch")
           for p in (ROOT / folder).rglob("*.py")]
  assert len(files) > 50
  wrong = {str(p.relative_to(ROOT)): steps for p in files
           if (steps := _indent_steps(p.read_text())) - {2}}
  assert not wrong, f"blocks indent by 2 spaces; these files indent otherwise: {wrong}"


def test_lint_finds_nothing():
  """ruff (config: ruff.toml) over the repository: unused imports and names, undefined names,
  syntax errors, lines over the length limit. A virtual environment made inside the checkout (any
  folder with a pyvenv.cfg: ruff leaves out only those named .venv or venv) is not ours to lint."""
  venvs = [f"--extend-exclude={cfg.parent.name}" for cfg in ROOT.glob("*/pyvenv.cfg")]
  result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", *venvs, "."],
                          cwd=ROOT, capture_output=True, text=True)
  assert result.returncode == 0, result.stdout + result.stderr
