"""RESULTS.md generation: tables from the runs' files, claims checked on constructed numbers."""

from __future__ import annotations

import json
import os

import numpy as np

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


def _write_bootstrap(root, name, replicates):
  (root / name / "eval_metrics.bootstrap.json").write_text(json.dumps({"step": 1500, **replicates}))


def _claim_line(text, label, words):
  return next(l for l in text.splitlines() if l.startswith(f"| {label} |") and words in l)


def test_claims_are_judged_on_their_intervals(tmp_path):
  draws = lambda centre, spread: list(centre + spread * np.linspace(-1, 1, 41))
  # Baselines: 30 vs 40, replicates paired (replicate i of each run: (30 + d_i) / (40 + d_i)):
  # the ratio 0.75 is wholly below 1 -> holds.
  _write_run(tmp_path, "classcond_v_small",
             {report.LABEL_FRECHET: 30.0, report.LABEL_FRECHET + "_ci95": [29.0, 31.0]}, _run())
  _write_bootstrap(tmp_path, "classcond_v_small", {report.LABEL_FRECHET: draws(30.0, 1.0)})
  _write_run(tmp_path, "uncond_v_small",
             {report.FRECHET: 40.0} | {f"eval/inpainting_sdedit/lpips@{r}": 0.3 for r in RATIOS},
             _run())
  _write_bootstrap(tmp_path, "uncond_v_small",
                   {report.FRECHET: draws(40.0, 1.0)}
                   | {f"eval/inpainting_sdedit/lpips@{r}": draws(0.3, 0.01) for r in RATIOS})
  # MT-X 29 +- 5 vs 30 +- 1: the interval straddles 1 -> inconclusive.
  _write_run(tmp_path, "imgmask_classcond_v_small", {report.LABEL_FRECHET: 29.0}, _run())
  _write_bootstrap(tmp_path, "imgmask_classcond_v_small", {report.LABEL_FRECHET: draws(29.0, 5.0)})
  # MT-U 60 vs 40: the ratio 1.5 is wholly above 1.12 -> does not hold. Its inpainting: 0.05 vs 0.3.
  _write_run(tmp_path, report.MT_U_RUN,
             {report.FRECHET: 60.0} | {f"eval/inpainting/lpips@{r}": 0.05 for r in RATIOS}, _run())
  _write_bootstrap(tmp_path, report.MT_U_RUN,
                   {report.FRECHET: draws(60.0, 1.0)}
                   | {f"eval/inpainting/lpips@{r}": draws(0.05, 0.005) for r in RATIOS})
  # C4 without replicates: no interval, no verdict.
  _write_run(tmp_path, "imglabel_v_small", {"eval/label_accuracy": 0.8}, _run())
  _write_run(tmp_path, "classifier_from_uncond_v_small", {"eval/label_accuracy": 0.7}, _run())
  text = report.render(report.load_runs(str(tmp_path)), str(tmp_path))
  assert "| 0.75 [0.744, 0.756] | 30 vs 40 | **holds** |" in _claim_line(text, "B", "Baselines")
  assert "| inconclusive |" in _claim_line(text, "C1", "seed 0")
  assert "| not run (missing imgmask_classcond_v_small_seed1, classcond_v_small_seed1) |" in \
      _claim_line(text, "C1", "seed 1")
  assert "| 1.5 [" in _claim_line(text, "C2", "MT-Diffusion-U /")
  assert "| **does not hold** |" in _claim_line(text, "C2", "MT-Diffusion-U /")
  assert "| 0.167 [" in _claim_line(text, "C3 SDEdit @0.5", "SDEdit")
  assert "| **holds** |" in _claim_line(text, "C3 SDEdit @0.5", "SDEdit")
  assert "not measured (no 'eval/inpainting_replacement/lpips@0.5')" in _claim_line(
      text, "C3 known-region replacement @0.5", "replacement")
  assert "| not run (missing imgmask_v_observation_small) |" in _claim_line(
      text, "C3 SDEdit @0.5, observation profile", "observation profile")
  assert "| 0.1 | 0.8 vs 0.7 | no interval |" in _claim_line(text, "C4", "fine-tuned")
  # The tables show intervals where they were measured.
  assert "| `classcond_v_small` | 30 [29.1, 30.9] | - |" in text  # from the replicates


def test_verdicts():
  assert report.verdict((0.5, 0.9), bound=1.0, below=True) == "holds"
  assert report.verdict((0.9, 1.1), bound=1.0, below=True) == "inconclusive"
  assert report.verdict((1.1, 1.3), bound=1.0, below=True) == "does not hold"
  assert report.verdict((0.01, 0.05), bound=0.0, below=False) == "holds"
  assert report.verdict((-0.05, -0.01), bound=0.0, below=False) == "does not hold"
  assert report.verdict(None, bound=1.0, below=True) == "no interval"


def test_tables_and_budgets(tmp_path):
  _write_run(tmp_path, "recon_small",
             {f"eval/inpainting/lpips@{r}": 0.25 for r in RATIOS}
             | {f"eval/inpainting/psnr@{r}": 21.0 for r in RATIOS}, _run(wall=300.0))
  # Made before run.json existed: the budget comes from metrics.jsonl (steps / steps_per_s).
  _write_run(tmp_path, "uncond_small", {"eval/frechet_alexnet_distance": 40.0}, None,
             [{"step": 50, "steps_per_s": 1.0}, {"step": 100, "steps_per_s": 0.5}])
  (tmp_path / "notes").mkdir()  # a folder without eval_metrics.json is not a run
  text = report.render(report.load_runs(str(tmp_path)), str(tmp_path))
  assert "| `recon_small` | 0.25 | 0.25 | 0.25 | 0.25 | 21 | 21 | 21 | 21 | 1500 steps x 48, 5.0 min" in text
  assert "100 steps x ?, 2.5 min train wall (from metrics.jsonl" in text
  assert "notes" not in text


def test_the_cpu_generation_is_recorded_and_shown():
  from mmdiff_jax.training.run_files import cpu_fields
  cpuinfo = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
             "model name\t: AMD EPYC\n\nprocessor\t: 1\ncpu family\t: 26\nmodel\t\t: 2\n")
  fields = cpu_fields(cpuinfo)
  assert (fields["cpu family"], fields["model"], fields["model name"]) == ("25", "17", "AMD EPYC")
  run = _run()
  run["invocations"][0]["host_cpu_family_model"] = "25/17"
  assert report.budget(run).endswith("(1 x cpu, 2 cores EPYC (family/model 25/17))")
  assert report.budget(_run()).endswith("(1 x cpu, 2 cores EPYC)")  # runs recorded before


def test_main_writes_the_file(tmp_path):
  _write_run(tmp_path / "results", "imglabel_small",
             {"eval/frechet_alexnet_distance": 50.0, "eval/label_agreement": 0.95,
              "eval/classifier_test_accuracy": 0.9}, _run())
  out = tmp_path / "RESULTS.md"
  report.write_report(str(tmp_path / "results"), str(out),
                      grain_figure=str(tmp_path / "grain.png"))
  assert not (tmp_path / "grain.png").exists()  # none of the grain figure's runs is there
  assert "| `imglabel_small` | 50 |" in out.read_text()


def test_recorded_commands_split_back_into_the_arguments():
  import shlex
  from mmdiff_jax.training.run_files import _shell_quote
  args = ["--config.eval.after_training=('label_accuracy','generation')", "plain", "two words",
          'say "hi" $HOME', "it's\\", ""]
  assert shlex.split(" ".join(map(_shell_quote, args))) == args
  assert _shell_quote(args[0]) == f'"{args[0]}"'  # readable, not '"'"'


def test_commands_show_workdirs_without_the_machines_folders():
  recorded = ("python3 -m mmdiff_jax.main --config=configs/classifier.py:small "
              "--config.training.init_from=/work/runs/uncond_v_small "
              "\"--config.eval.after_training=('label_accuracy',)\" --workdir=/scratch/me/runs/clf")
  assert report._portable_command(recorded) == (
      "python3 -m mmdiff_jax.main --config=configs/classifier.py:small "
      "--config.training.init_from=<runs>/uncond_v_small "
      "\"--config.eval.after_training=('label_accuracy',)\" --workdir=<runs>/clf")
  other_paths = "--config.data.data_dir=/data/tfds --params=/exports/ema.msgpack"
  assert report._portable_command(other_paths) == other_paths  # not runs: shown as recorded


def test_sampler_step_sweep_table(tmp_path):
  _write_run(tmp_path, "classcond_v_small", {report.LABEL_FRECHET: 30.0}, _run())
  for steps, value in ((10, 30.0), (50, 25.0)):
    (tmp_path / "classcond_v_small" / f"eval_metrics_ddim{steps}.json").write_text(json.dumps(
        {report.LABEL_FRECHET: value, report.LABEL_FRECHET + "_ci95": [value - 1, value + 1]}))
  text = report.render(report.load_runs(str(tmp_path)), str(tmp_path))
  assert "## Sampler steps: `classcond_v_small`" in text
  assert "| 10 | 30 [29, 31] |\n| 50 | 25 [24, 26] |" in text


def test_ablation_tables_read_each_choice_from_its_run_and_file(tmp_path):
  _write_run(tmp_path, "imglabel_v_small", {report.FRECHET: 97.0, "eval/label_accuracy": 0.75}, _run())
  _write_bootstrap(tmp_path, "imglabel_v_small", {report.FRECHET: [96.0, 97.0, 98.0, 99.0] * 10})
  (tmp_path / "imglabel_v_small" / "eval_metrics_feedback_argmax.json").write_text(json.dumps(
      {report.FRECHET: 111.0, "eval/label_agreement": 0.64}))
  text = report.render(report.load_runs(str(tmp_path)), str(tmp_path))
  section = text[text.index("## Design choices"):text.index("## Generation")]
  learned = _claim_line(section, "learned white-noise-like code (`categorical`)", "imglabel_v_small")
  assert "| 97 [" in learned and "| 0.75 |" in learned and "1500 steps x 48" in learned
  assert "| `imglabel_v_classmean_small` | - | - | - | - | not run (missing " in section
  argmax = _claim_line(section, "`argmax`, learned code", "eval_metrics_feedback_argmax")
  assert "| 111 | 0.64 |" in argmax
  assert "not run (missing imglabel_v_small/eval_metrics_feedback_sampled.json)" in section
  assert ("not run (missing imglabel_v_classmean_small_seed1/eval_metrics_feedback_argmax.json)"
          in section)


def test_background_grain_table_and_figure_from_the_sample_grids(tmp_path):
  from mmdiff_jax.sampling import grids
  rng = np.random.default_rng(0)
  clean = np.full((20, 28, 28, 1), -1.0)
  clean[:, 8:20, 8:20] = 0.8
  grainy = np.clip(clean + 0.1 * rng.standard_normal(clean.shape), -1, 1)
  _write_run(tmp_path, "uncond_v_small", {report.FRECHET: 30.0}, _run())
  grids.save_grid(str(tmp_path / "uncond_v_small" / "joint_step1500.png"), clean)
  _write_run(tmp_path, "imglabel_v_small", {report.FRECHET: 97.0}, _run())
  grids.save_grid(str(tmp_path / "imglabel_v_small" / "joint_step1500.png"), grainy,
                  captions=["Bag"] * 20)
  text = report.render(report.load_runs(str(tmp_path)), str(tmp_path))
  section = text[text.index("### Background grain"):text.index("## Generation")]
  assert "| image only (no label) | `uncond_v_small` | 0 [0, 0] (n=20) | - |" in section
  learned = _claim_line(section, "learned code, scale 2", "imglabel_v_small")
  assert float(learned.split("|")[3].split()[0]) > 0.03  # clipped noise of 0.1 on the background
  assert "| `imglabel_v_classmean_small` | - | - | - |" in section
  report.write_grain_figure(str(tmp_path), str(tmp_path / "grain.png"))
  assert grids.load_grid(str(tmp_path / "grain.png"), image_size=(28, 28), num_columns=8,
                         scale=3).shape == (16, 28, 28, 1)


def test_paired_differences_against_the_same_runs_expected_feedback(tmp_path):
  _write_run(tmp_path, "imgseg_eps_head_small", {report.FRECHET: 90.0}, _run())
  folder = tmp_path / "imgseg_eps_head_small"
  for mode, frechet, draws in (("expected", 94.0, [93.0, 94.0, 95.0] * 10),
                               ("argmax", 74.0, [72.0, 74.0, 75.0] * 10)):
    (folder / f"eval_metrics_feedback_{mode}.json").write_text(json.dumps({report.FRECHET: frechet}))
    (folder / f"eval_metrics_feedback_{mode}.bootstrap.json").write_text(
        json.dumps({report.FRECHET: draws}))
  text = report.render(report.load_runs(str(tmp_path)), str(tmp_path))
  section = text[text.index("### Feedback of the unobserved segmentation map"):]
  expected = _claim_line(section, "`expected` (the library's default), imgseg eps",
                         "eval_metrics_feedback_expected")
  argmax = _claim_line(section, "`argmax`, imgseg eps", "eval_metrics_feedback_argmax")
  assert expected.split(" | ")[-3:-1] == ["-", "-"]
  # replicate differences -20, -20, -21 (each replicate pairs the same resample), centred on -20
  assert "| -20 [-21, -20] | - |" in argmax


def test_paired_differences_against_another_run_trained_with_the_same_seed(tmp_path):
  # z0 vs v on imgmask's seed 1: each replicate pairs the same resample of the evaluated examples.
  lpips = "eval/inpainting/lpips@0.5"
  for run, value, draws in (("imgmask_v_small_seed1", 0.20, [0.19, 0.20, 0.21] * 10),
                            ("imgmask_z0_small_seed1", 0.19, [0.185, 0.19, 0.20] * 10)):
    _write_run(tmp_path, run, {lpips: value}, _run())
    _write_bootstrap(tmp_path, run, {lpips: draws})
  # The seed-0 z0 run's baseline has replicates of another length: no paired interval is made up.
  _write_run(tmp_path, "imgmask_v_small", {lpips: 0.20}, _run())
  _write_bootstrap(tmp_path, "imgmask_v_small", {lpips: [0.2] * 7})
  _write_run(tmp_path, "imgmask_z0_small", {lpips: 0.19}, _run())
  _write_bootstrap(tmp_path, "imgmask_z0_small", {lpips: [0.19] * 30})
  text = report.render(report.load_runs(str(tmp_path)), str(tmp_path))
  section = text[text.index("### Parameterization (`diffusion.parameterization`)"):]
  z0 = _claim_line(section, "imgmask, z0, seed 1", "imgmask_z0_small_seed1")
  assert z0.split(" | ")[-2] == "-0.01 [-0.01, -0.005]"  # differences -0.005, -0.01, -0.01
  assert _claim_line(section, "imgmask, v, seed 1 (named random streams)",
                     "imgmask_v_small_seed1").split(" | ")[-2] == "-"
  assert _claim_line(section, "imgmask, z0 (the default since; named random streams)",
                     "imgmask_z0_small").split(" | ")[-2] == "not paired (replicate counts differ: [7, 30])"


def test_runs_evaluated_on_different_numbers_of_examples_are_not_paired(tmp_path):
  """Replicate i of two runs resamples the same example indices only when both drew from as many
  examples (metrics.bootstrap_indices seeds on n): as many replicates is not enough."""
  draws = [29.0, 30.0, 31.0] * 10
  _write_run(tmp_path, "classcond_v_small",
             {report.LABEL_FRECHET: 30.0, report.LABEL_FRECHET + "_examples": [2000, 2000]}, _run())
  _write_bootstrap(tmp_path, "classcond_v_small", {report.LABEL_FRECHET: draws})
  # A file from before every metric recorded its examples: the run's generated_examples stand in.
  _write_run(tmp_path, "uncond_v_small", {report.FRECHET: 40.0, "eval/generated_examples": 1000}, _run())
  _write_bootstrap(tmp_path, "uncond_v_small", {report.FRECHET: [39.0, 40.0, 41.0] * 10})
  lpips = "eval/inpainting/lpips@0.5"
  for run, examples in (("imgmask_v_small_seed1", 2000), ("imgmask_z0_small_seed1", 1000),
                        ("imgmask_v_small", None), ("imgmask_z0_small", 2000)):
    known = {} if examples is None else {lpips + "_examples": examples}
    _write_run(tmp_path, run, {lpips: 0.2, **known}, _run())
    _write_bootstrap(tmp_path, run, {lpips: [0.19, 0.2, 0.21] * 10})
  text = report.render(report.load_runs(str(tmp_path)), str(tmp_path))
  assert ("| 0.75 | 30 vs 40 | not judged: not paired (examples differ: [2000, 2000] vs [1000, 1000]) |"
          in _claim_line(text, "B", "Baselines"))
  section = text[text.index("### Parameterization (`diffusion.parameterization`)"):]
  assert _claim_line(section, "imgmask, z0, seed 1", "imgmask_z0_small_seed1").split(" | ")[-2] == \
      "not paired (examples differ: 1000 vs 2000)"
  # One side's count unknown (an older file): paired as before.
  assert _claim_line(section, "imgmask, z0 (the default since; named random streams)",
                     "imgmask_z0_small").split(" | ")[-2] == "+0 [+0, +0]"


def test_fine_tuning_curves_come_from_the_periodic_evaluations(tmp_path):
  (imglabel, joint), (uncond, unconditional), (scratch, _), *seed1 = report.FINE_TUNING_CURVES
  key = report.PERIODIC_ACCURACY
  _write_run(tmp_path, joint, {"eval/label_accuracy": 0.9}, _run(), log_rows=[
      {"step": 50, "loss": 1.0},
      {"step": 100, key: 0.5, key + "_ci95": [0.45, 0.55]},
      {"step": 200, key: 0.75, key + "_ci95": [0.7, 0.8]}])
  _write_run(tmp_path, unconditional, {"eval/label_accuracy": 0.9}, _run(), log_rows=[
      {"step": 100, key: 0.25}])
  lines = report.render_fine_tuning_curves(str(tmp_path))
  header = next(l for l in lines if l.startswith("| step |"))
  assert header == f"| step | {imglabel} | {uncond} | {scratch} | {' | '.join(l for l, _ in seed1)} |"
  rest = " | -" * len(seed1)
  assert f"| 100 | 0.5 [0.45, 0.55] | 0.25 | -{rest} |" in lines
  assert f"| 200 | 0.75 [0.7, 0.8] | - | -{rest} |" in lines
  assert not any(l.startswith("| 50 |") for l in lines)  # a row without the evaluation
  assert report.render_fine_tuning_curves(str(tmp_path / "elsewhere")) == []
