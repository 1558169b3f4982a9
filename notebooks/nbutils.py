"""Small helpers shared by the notebooks: choosing the dataset, showing images and plots; and the
notebooks' Colab link and install cell, written from REPOSITORY.

Segmentation maps are coloured by the package's own `mmdiff_jax.models.kinds.segmentation.colorize`, so the
notebooks and the sample PNGs of a run colour them alike. Plots need matplotlib (there on Colab; pip
installs it with the package's `test` extra).

For your own clone: set REPOSITORY below and run `python3 notebooks/nbutils.py`; it rewrites every
notebook's "Open in Colab" link and the clone URL in its install cell (tests/test_notebooks.py checks
that they match).
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

QUICK = os.environ.get("MMDIFF_NOTEBOOK_QUICK", "0") == "1"  # set by tests/test_notebooks.py

REPOSITORY = "mmdiff-jax/mmdiff_jax"  # GitHub owner/name the Colab links open and Colab clones
BRANCH = "main"


# --------------------------------------------------------------------------- Colab


def colab_badge(notebook: str) -> str:
  """The Markdown "Open in Colab" link of notebooks/`notebook` in REPOSITORY at BRANCH."""
  url = f"https://colab.research.google.com/github/{REPOSITORY}/blob/{BRANCH}/notebooks/{notebook}"
  return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})"


INSTALL_CELL = '''# Install. In a checkout of mmdiff_jax (or with $MMDIFF_REPO set) this uses the checkout as it is;
# elsewhere (Colab) it clones REPO_URL and pip-installs the package, keeping the runtime's own jax and
# jaxlib (Colab's are built for its GPU / TPU). Where those are older than the package needs
# (setup.cfg), it upgrades them together with the runtime's accelerator plugin (jax-cuda*, libtpu).
import os, pathlib, subprocess, sys
from importlib import metadata

REPO_URL = "https://github.com/{repository}.git"  # your clone (notebooks/nbutils.py sets every notebook's)


def find_checkout():
  cwd = pathlib.Path.cwd()
  for path in [os.environ.get("MMDIFF_REPO"), cwd, *cwd.parents, cwd / "mmdiff_jax"]:
    if path and (pathlib.Path(path) / "mmdiff_jax" / "__init__.py").exists() \\
        and (pathlib.Path(path) / "configs").is_dir():
      return pathlib.Path(path).resolve()
  return None


def installed(name):
  try:
    return [f"{{name}}=={{metadata.version(name)}}"]
  except metadata.PackageNotFoundError:
    return []


def pip_install(*requirements):
  return subprocess.run([sys.executable, "-m", "pip", "install", "-q", *requirements]).returncode == 0


def version_tuple(text):
  return tuple(int(part) for part in text.split(".")[:3] if part.isdigit())


def jax_too_old(repo):
  """Whether the runtime's jax is older than the lower bound in the package's setup.cfg."""
  bound = next((line.split(">=")[1].strip() for line in (repo / "setup.cfg").read_text().splitlines()
                if line.strip().startswith("jax>=")), "0")
  return version_tuple(metadata.version("jax")) < version_tuple(bound) if installed("jax") else False


REPO = find_checkout()
CLONED_HERE = pathlib.Path("mmdiff_jax").resolve() / ".cloned_by_the_install_cell"
if REPO is None:
  REPO = CLONED_HERE.parent
  subprocess.run(["git", "clone", "--depth=1", REPO_URL, str(REPO)], check=True)
  CLONED_HERE.touch()
# A checkout of yours is used as it is; the clone made here is installed (again, if that failed).
if REPO == CLONED_HERE.parent and CLONED_HERE.exists() and not installed("mmdiff_jax"):
  if not pip_install("-e", str(REPO), *installed("jax"), *installed("jaxlib")):
    if not jax_too_old(REPO):
      raise RuntimeError("pip could not install mmdiff_jax (its messages are above)")
    plugins = [name for name in (d.metadata["Name"] or "" for d in metadata.distributions())
               if name.lower().startswith(("jax-cuda", "jax_cuda", "libtpu"))]
    print(f"The runtime's {{' '.join(installed('jax'))}} is older than mmdiff_jax needs: upgrading jax, "
          f"jaxlib and {{plugins or 'no accelerator plugin'}}.")
    if not pip_install("-U", "-e", str(REPO), "jax", "jaxlib", *plugins):
      raise RuntimeError("pip could not install mmdiff_jax (its messages are above)")
    print("If an import below fails, restart the session (Runtime > Restart session) and run this "
          "cell again.")
for path in (REPO, REPO / "notebooks"):  # the package, configs/ and the notebook helpers
  if str(path) not in sys.path:
    sys.path.insert(0, str(path))
import mmdiff_jax
print("mmdiff_jax from", pathlib.Path(mmdiff_jax.__file__).parent)'''


def install_cell() -> str:
  """The first code cell of every notebook, cloning REPOSITORY."""
  return INSTALL_CELL.format(repository=REPOSITORY)


def write_colab_cells(directory: pathlib.Path) -> list[pathlib.Path]:
  """Puts colab_badge() on the first line of each notebook's first (Markdown) cell and
  install_cell() in its first code cell; returns the notebooks changed. Outputs stay stripped."""
  changed = []
  for path in sorted(directory.glob("*.ipynb")):
    notebook = json.loads(path.read_text())
    title = notebook["cells"][0]
    lines = "".join(title["source"]).splitlines()
    if lines and "colab-badge.svg" in lines[0]:
      lines = lines[1:]
    title["source"] = _cell_lines("\n".join([colab_badge(path.name), *lines]))
    code = next(c for c in notebook["cells"] if c["cell_type"] == "code")
    code["source"] = _cell_lines(install_cell())
    text = json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"
    if text != path.read_text():
      path.write_text(text)
      changed.append(path)
  return changed


def _cell_lines(text: str) -> list[str]:
  """A cell's source as nbformat stores it: lines with their newlines, the last without."""
  return text.splitlines(keepends=True)


# --------------------------------------------------------------------------- data


def fashion_mnist_name(data_dir: str | None = None, raw_dir: str | None = None) -> str:
  """The `config.data.name` for Fashion-MNIST here (offline files, else TFDS's, downloaded once)."""
  from mmdiff_jax.data import sources

  return sources.choose_fashion_mnist(data_dir, raw_dir)


# --------------------------------------------------------------------------- images


def _font():
  return ImageFont.load_default()


def to_uint8(images) -> np.ndarray:
  """Images in [-1, 1] (B, H, W[, C]) -> uint8 (B, H, W, 3)."""
  x = np.asarray(images, np.float32)
  if x.ndim == 3:
    x = x[..., None]
  x = np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)
  return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


def grid(rows: Sequence, *, row_titles: Sequence[str] | None = None,
         captions: Sequence[Sequence[str]] | None = None, scale: int = 2) -> Image.Image:
  """A PIL image of rows of pictures.

  Args:
    rows: each an array (B, H, W[, C]), float in [-1, 1] (e.g. maps from kinds.segmentation.colorize) or uint8 RGB.
    row_titles: a title left of each row.
    captions: per row, a caption under each picture.
  """
  rows = [np.asarray(r) if np.asarray(r).dtype == np.uint8 and np.asarray(r).ndim == 4
          else to_uint8(r) for r in rows]
  height, width = rows[0].shape[1:3]
  cell_w, cell_h = width * scale + 4, height * scale + (12 if captions else 0) + 4
  title_w = 8 + 6 * max((len(t) for t in row_titles), default=0) if row_titles else 0
  columns = max(len(r) for r in rows)
  canvas = Image.new("RGB", (title_w + columns * cell_w, len(rows) * cell_h), "white")
  draw = ImageDraw.Draw(canvas)
  for i, row in enumerate(rows):
    y = i * cell_h + 2
    if row_titles:
      draw.text((4, y + height * scale // 2 - 5), row_titles[i], fill="black", font=_font())
    for j, picture in enumerate(row):
      x = title_w + j * cell_w + 2
      tile = Image.fromarray(picture).resize((width * scale, height * scale), Image.NEAREST)
      canvas.paste(tile, (x, y))
      if captions and captions[i] is not None and j < len(captions[i]):
        draw.text((x, y + height * scale), str(captions[i][j])[: max(3, width * scale // 6)],
                  fill="black", font=_font())
  return canvas


def show(image) -> None:
  """Displays a PIL image or a PNG file in the notebook."""
  from IPython.display import Image as IPythonImage, display
  if isinstance(image, (str, os.PathLike)):
    display(IPythonImage(filename=os.fspath(image)))
  else:
    display(image)


# --------------------------------------------------------------------------- plots


def line_plot(series: Mapping[str, tuple], *, title: str = "", xlabel: str = "", ylabel: str = "",
              logy: bool = False, size=(6.0, 3.2)) -> None:
  """Shows one line per entry {label: (x, y)} (matplotlib)."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  figure, axes = plt.subplots(figsize=size)
  for label, (x, y) in series.items():
    axes.plot(np.asarray(x), np.asarray(y), label=label)
  axes.set(title=title, xlabel=xlabel, ylabel=ylabel)
  if logy:
    axes.set_yscale("log")
  axes.grid(alpha=0.3)
  axes.legend()
  plt.show()
  plt.close(figure)


def table(rows: Sequence[Mapping], columns: Sequence[str] | None = None) -> None:
  """Displays rows of dicts as a Markdown table."""
  from IPython.display import Markdown, display
  columns = list(columns or rows[0].keys())
  fmt = lambda v: (f"{v:.4g}" if isinstance(v, float) else str(v)).replace("|", "\\|")
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
  display(Markdown("\n".join(lines)))


if __name__ == "__main__":
  for changed in write_colab_cells(pathlib.Path(__file__).resolve().parent):
    print("rewrote", changed)
