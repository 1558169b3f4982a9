"""RESULTS.md generation: tables from the runs' files, claims checked on constructed numbers."""

from __future__ import annotations

import json
import os

from mmdiff_jax.evaluation import report

RATIOS = report.MASK_RATIOS


def _write_run(root, name, metrics, run=None, log_rows=None):
  os.makedirs(root / name)
  (root / name / "eval_metrics.json").write_text(json.dumps(metrics))
  if run is not None:
    (root / name / "run.json").write_text(json.dumps(run))
  if log_rows is not None:
    (root / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log_rows))


def _run(steps=1500, wall=600.0):
  return {"batch_size": 48, "steps_done": steps, "train_wall_s": wall,
          "command": "python3 -m mmdiff_jax.main --config=configs/x.py:small",
          "invocations": [{"devices": "1 x cpu", "host_cpu": "EPYC", "host_cores": 2}]}


def test_claims_and_tables(tmp_path):
  _write_run(tmp_path, "imgmask_small",
             {f"eval/inpainting/lpips@{r}": 0.1 for r in RATIOS}
             | {f"eval/inpainting/psnr@{r}": 20.0 for r in RATIOS}, _run())
  _write_run(tmp_path, "recon_small",
             {f"eval/inpainting/lpips@{r}": 0.25 for r in RATIOS}
             | {f"eval/inpainting/psnr@{r}": 21.0 for r in RATIOS}, _run(wall=300.0))
  _write_run(tmp_path, "imglabel_small", {"eval/frechet_alexnet_distance": 50.0}, _run())
  # Made before run.json existed: the budget comes from metrics.jsonl (steps / steps_per_s).
  _write_run(tmp_path, "uncond_small", {"eval/frechet_alexnet_distance": 40.0}, None,
             [{"step": 50, "steps_per_s": 1.0}, {"step": 100, "steps_per_s": 0.5}])
  (tmp_path / "notes").mkdir()  # a folder without eval_metrics.json is not a run
  text = report.render(report.load_runs(str(tmp_path)))
  lines = text.splitlines()
  lpips_claim = next(l for l in lines if l.startswith("| Multitask masked-region LPIPS"))
  assert "| **no** |" in lpips_claim and "@0.1: 0.40" in lpips_claim  # 0.1 / 0.25 = 0.4 > 1/3
  frechet = next(l for l in lines if "beats the unconditional baseline on the Fréchet" in l)
  assert "| **no** | 50.0 vs 40.0 |" in frechet
  assert any("v-prediction" in l and "| not run |" in l for l in lines)
  assert "| `recon_small` | 0.25 | 0.25 | 0.25 | 0.25 | 21 | 21 | 21 | 21 | 1500 steps x 48, 5.0 min" in text
  assert "100 steps x ?, 2.5 min train wall (from metrics.jsonl" in text
  assert "notes" not in text


def test_lpips_claim_holds_when_three_times_lower(tmp_path):
  _write_run(tmp_path, "imgmask_small", {f"eval/inpainting/lpips@{r}": 0.1 for r in RATIOS}, _run())
  _write_run(tmp_path, "recon_small", {f"eval/inpainting/lpips@{r}": 0.31 for r in RATIOS}, _run())
  text = report.render(report.load_runs(str(tmp_path)))
  claim = next(l for l in text.splitlines() if l.startswith("| Multitask masked-region LPIPS"))
  assert "| yes |" in claim


def test_main_writes_the_file(tmp_path):
  _write_run(tmp_path / "results", "imglabel_small",
             {"eval/frechet_alexnet_distance": 50.0, "eval/label_agreement": 0.95,
              "eval/classifier_test_accuracy": 0.9}, _run())
  out = tmp_path / "RESULTS.md"
  report.write_report(str(tmp_path / "results"), str(out))
  assert "| `imglabel_small` | 50 |" in out.read_text()


def test_recorded_commands_split_back_into_the_arguments():
  import shlex
  from mmdiff_jax.training.train import _shell_quote
  args = ["--config.eval.after_training=('label_accuracy','generation')", "plain", "two words",
          'say "hi" $HOME', "it's\\", ""]
  assert shlex.split(" ".join(map(_shell_quote, args))) == args
  assert _shell_quote(args[0]) == f'"{args[0]}"'  # readable, not '"'"'
