r"""Train-step speed against this machine's matmul peak, and the multitask overhead.

For each config: examples/s, model FLOPs per step (XLA's cost analysis of the step's HLO as lowered,
before backend rewrites; the compiled program's figure is in the JSON: on a GPU it counts the
convolutions, which become cuDNN calls, as 0), achieved
FLOP/s and its fraction of the matmul peak (an n x n jnp.dot in the model's dtype, n = 2048 by
default), the step and the matmul timed in alternation within the run. Then the step time of imglabel
over the image-only baseline configs/baseline_uncond.py (the same config without the label modality:
same backbone, one head), also in alternation. The JSON is written after each config compiles (compile
time, FLOPs) and again after it is timed ("complete": true only at the end), so that a time limit leaves
what was measured.

  python3 -m benchmarks.train_step                         # smoke, small, default; then multitask
  python3 -m benchmarks.train_step --configs=small --rounds=9 --json=/tmp/train_step.json
  python3 -m benchmarks.train_step --dtype=bfloat16 --matmul_n=8192 --reps=20 --matmul_reps=20  # a GPU
"""

from __future__ import annotations

import argparse
import gc
import statistics


from benchmarks import common, setups
from mmdiff_jax import tcmalloc

# Steps per timed round: enough for ~1 s on 2 CPU cores, fewer for the big default config.
DEFAULT_REPS = {"smoke": 10, "small": 3, "default": 1}
DEFAULT_ROUNDS = {"smoke": 5, "small": 5, "default": 2}


def bench_config(variant: str, args, results: list, write) -> setups.TrainStep:
  """Compiles and times one config; its result goes into `results` after compiling (compile time,
  FLOPs) and is completed after timing, with write() after each (a time limit leaves what was
  measured)."""
  label = variant or "default"
  overrides = {"model.dtype": args.dtype}
  if args.batch_size:
    overrides["training.batch_size"] = args.batch_size
  step = setups.TrainStep(setups.get_config(variant, **overrides))
  print(f"[{label}] compiled in {step.compile_s:.1f} s; {step.num_params / 1e6:.3f}M parameters, "
        f"batch {step.batch_size}, {step.flops / 1e9:.2f} GFLOP/step (XLA cost analysis)", flush=True)
  result = {
      "config": label, "num_params": step.num_params, "batch_size": step.batch_size,
      "dtype": args.dtype, "compile_s": step.compile_s, "flops_per_step": step.flops,
      "compiled_flops_per_step": step.compiled_flops,
      "bytes_accessed_per_step": step.bytes_accessed, "timed": False,
  }
  results.append(result)
  write()
  peak = common.MatmulPeak(args.matmul_n, dtype=args.dtype)
  rounds = args.rounds or DEFAULT_ROUNDS[label]
  timing = common.alternate({"step": step, "matmul": peak}, rounds=rounds,
                            reps={"step": args.reps or DEFAULT_REPS[label], "matmul": args.matmul_reps})
  step_s, matmul_s = timing["seconds"]["step"], timing["seconds"]["matmul"]
  achieved = [step.flops / s for s in step_s]
  peaks = [peak.flops / s for s in matmul_s]
  fraction = common.ratios(achieved, peaks)
  result.update({
      "timed": True, "rounds": rounds,
      "step_s": step_s, "matmul_s": matmul_s, "load_per_round": timing["load"],
      "examples_per_s": step.batch_size / statistics.median(step_s),
      "achieved_flops_per_s": statistics.median(achieved),
      "matmul_peak_flops_per_s": statistics.median(peaks),
      "fraction_of_peak": common.summary(fraction),
      # The least disturbed rounds of each: the fastest step over the fastest matmul.
      "fraction_best_over_best": (step.flops / min(step_s)) / (peak.flops / min(matmul_s)),
  })
  write()
  print(f"[{label}] step {statistics.median(step_s):.3f} s (median of {rounds} rounds), "
        f"{result['achieved_flops_per_s'] / 1e9:.1f} GFLOP/s = "
        f"{100 * result['fraction_of_peak']['median']:.1f}% of the matmul peak "
        f"{result['matmul_peak_flops_per_s'] / 1e9:.0f} GFLOP/s; load {timing['load']}", flush=True)
  return step


def bench_multitask(variant: str, args, imglabel_step: setups.TrainStep | None) -> dict:
  overrides = {"model.dtype": args.dtype}
  if args.batch_size:
    overrides["training.batch_size"] = args.batch_size
  multi = imglabel_step or setups.TrainStep(setups.get_config(variant, **overrides))
  single = setups.TrainStep(setups.get_config(variant, image_only=True, **overrides))
  label = variant or "default"
  reps = args.reps or DEFAULT_REPS[label]
  timing = common.alternate({"imglabel": multi, "image_only": single},
                            rounds=args.multitask_rounds, reps=reps)
  ratio = common.ratios(timing["seconds"]["imglabel"], timing["seconds"]["image_only"])
  result = {
      "config": label, "rounds": args.multitask_rounds, "reps_per_round": reps,
      "imglabel": {"num_params": multi.num_params, "flops_per_step": multi.flops,
                   "compile_s": multi.compile_s, "step_s": timing["seconds"]["imglabel"]},
      "image_only": {"num_params": single.num_params, "flops_per_step": single.flops,
                     "compile_s": single.compile_s, "step_s": timing["seconds"]["image_only"]},
      "ratio": common.summary(ratio), "ratio_per_round": ratio,
      "flops_ratio": multi.flops / single.flops, "load_per_round": timing["load"],
  }
  print(f"[multitask {label}] imglabel / image-only step time: {result['ratio']['median']:.3f} "
        f"(rounds {[round(r, 3) for r in ratio]}); load {timing['load']}", flush=True)
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--configs", default="smoke,small,default",
                      help="comma-separated variants of configs/imglabel.py ('default' = no variant)")
  parser.add_argument("--rounds", type=int, default=0, help="alternation rounds (0: per config)")
  parser.add_argument("--reps", type=int, default=0, help="steps per round (0: per config)")
  parser.add_argument("--batch_size", type=int, default=0, help="override the config's batch (0: keep)")
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--matmul_n", type=int, default=2048,
                      help="the peak's n x n matmul, in --dtype (on a GPU use 8192)")
  parser.add_argument("--matmul_reps", type=int, default=5)
  parser.add_argument("--multitask", default="small",
                      help="variant for the imglabel vs image-only ratio ('none' to skip)")
  parser.add_argument("--multitask_rounds", type=int, default=8)
  parser.add_argument("--json", default=common.default_json("train_step"))
  args = parser.parse_args()

  machine = common.machine()
  print(common.describe(machine), flush=True)
  results, kept, multitask = [], None, None
  # Rewritten as each figure arrives; "complete" says whether the run got to its end.
  write = lambda complete=False: common.write_json(args.json, {
      "machine": machine, "load_at_end": common.load(), "configs": results, "multitask": multitask,
      "complete": complete, "args": vars(args)})
  variants = [("" if v == "default" else v) for v in args.configs.split(",") if v]
  multitask_variant = "" if args.multitask == "default" else args.multitask
  for variant in variants:
    step = bench_config(variant, args, results, write)
    if args.multitask != "none" and variant == multitask_variant:
      kept = step
    del step
    gc.collect()
  if args.multitask != "none":
    multitask = bench_multitask(multitask_variant, args, kept)
    write()

  rows = [[r["config"], f"{r['num_params'] / 1e6:.3f}M", r["batch_size"], f"{r['compile_s']:.1f}",
           f"{r['flops_per_step'] / 1e9:.2f}", f"{statistics.median(r['step_s']):.3f}",
           f"{r['examples_per_s']:.1f}", f"{r['achieved_flops_per_s'] / 1e9:.1f}",
           f"{r['matmul_peak_flops_per_s'] / 1e9:.0f}",
           f"{100 * r['fraction_of_peak']['median']:.1f}% ({100 * r['fraction_of_peak']['min']:.1f}"
           f"-{100 * r['fraction_of_peak']['max']:.1f})",
           f"{100 * r['fraction_best_over_best']:.1f}%",
           f"{min(r['load_per_round'])}-{max(r['load_per_round'])}"] for r in results]
  common.print_table(
      f"Train step ({args.dtype}), {machine['nproc']} cores",
      ["config", "params", "batch", "compile s", "GFLOP/step", "step s", "examples/s", "GFLOP/s",
       "matmul peak GFLOP/s", "fraction of peak, per round: median (min-max)",
       "fastest step / fastest matmul", "load (1 min)"], rows)
  if multitask:
    m = multitask
    common.print_table(
        f"Multitask overhead ({m['config']}): imglabel vs image-only, {m['rounds']} alternating rounds",
        ["imglabel step s", "image-only step s", "ratio median (min-max)", "FLOPs ratio", "load"],
        [[f"{statistics.median(m['imglabel']['step_s']):.3f}",
          f"{statistics.median(m['image_only']['step_s']):.3f}",
          f"{m['ratio']['median']:.3f} ({m['ratio']['min']:.3f}-{m['ratio']['max']:.3f})",
          f"{m['flops_ratio']:.3f}", f"{min(m['load_per_round'])}-{max(m['load_per_round'])}"]])
  write(complete=True)


if __name__ == "__main__":
  tcmalloc.rerun_with_tcmalloc()  # the allocator the library's entry point runs with
  main()
