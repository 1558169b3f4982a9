r"""Per-device memory of the compiled train step: data-parallel vs FSDP over 8 simulated CPU devices.

From XLA's memory analysis of the compiled step (per device): arguments (state + batch shard), outputs,
temporaries (activations, gradients, optimizer intermediates), and the bytes of outputs aliased to
donated arguments; plus the state's bytes per device computed from its shardings (parameters, EMA,
optimizer state). Data-parallel: mesh data=8, parameters replicated. FSDP: mesh fsdp=8 with
config.fsdp=True (parameter dimensions named "channels_out", else "channels_in", split 8 ways).

  python3 -m benchmarks.memory                       # smoke, small, default
  python3 -m benchmarks.memory --configs=small --json=/tmp/memory.json
"""

from __future__ import annotations

import argparse
import time

import jax

jax.config.update("jax_num_cpu_devices", 8)  # before any backend starts

import numpy as np  # noqa: E402

from benchmarks import common, setups  # noqa: E402
from mmdiff_jax import tcmalloc
from mmdiff_jax.config_validation import validate_config  # noqa: E402
from mmdiff_jax.experiment import build_experiment  # noqa: E402
from mmdiff_jax.training import sharding as sharding_lib  # noqa: E402
from mmdiff_jax.training import state as state_lib  # noqa: E402

STRATEGIES = {"data-parallel": ({"data": 8, "fsdp": 1}, False), "fsdp": ({"data": 1, "fsdp": 8}, True)}
MIB = 2.0 ** 20


def _per_device(tree, shardings) -> int:
  return int(sum(np.prod(s.shard_shape(x.shape), dtype=np.int64) * np.dtype(x.dtype).itemsize
                 for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings))))


def measure(variant: str, strategy: str) -> dict:
  mesh_sizes, fsdp = STRATEGIES[strategy]
  config = setups.get_config(variant)
  config.mesh.update(mesh_sizes)
  config.fsdp = fsdp
  validate_config(config, num_devices=jax.device_count())
  experiment = build_experiment(config)
  mesh = sharding_lib.make_mesh(config.mesh)
  tx = state_lib.make_optimizer(config)
  abstract, shardings = state_lib.state_shardings(experiment.model, tx, mesh, fsdp=fsdp)
  step = state_lib.make_train_step(experiment.objective(), tx, ema_decay=config.training.ema_decay,
                                   mesh=mesh, shardings=shardings)
  batch = state_lib.example_batch(experiment.model, config.training.batch_size)
  start = time.perf_counter()
  compiled = step.lower(abstract, batch).compile()
  compile_s = time.perf_counter() - start
  analysis = compiled.memory_analysis()
  global_params = int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract.params)))
  result = {
      "config": variant or "default", "strategy": strategy, "mesh": dict(mesh.shape),
      "batch_size": int(config.training.batch_size), "compile_s": compile_s,
      "num_params": int(sum(x.size for x in jax.tree.leaves(abstract.params))),
      "params_global_bytes": global_params,
      "state_per_device_bytes": {
          "params": _per_device(abstract.params, shardings.params),
          "ema_params": _per_device(abstract.ema_params, shardings.ema_params),
          "opt_state": _per_device(abstract.opt_state, shardings.opt_state),
      },
      "compiled_per_device_bytes": {
          "arguments": int(analysis.argument_size_in_bytes),
          "outputs": int(analysis.output_size_in_bytes),
          "aliased": int(analysis.alias_size_in_bytes),
          "temporaries": int(analysis.temp_size_in_bytes),
          "generated_code": int(analysis.generated_code_size_in_bytes),
      },
  }
  c = result["compiled_per_device_bytes"]
  # Live at once, at most: arguments + temporaries + outputs not written in place of donated inputs.
  c["peak_bound"] = c["arguments"] + c["temporaries"] + c["outputs"] - c["aliased"]
  result["state_per_device_bytes"]["total"] = sum(result["state_per_device_bytes"].values())
  print(f"[{result['config']} {strategy}] compiled in {compile_s:.1f} s: state "
        f"{result['state_per_device_bytes']['total'] / MIB:.2f} MiB/device, temporaries "
        f"{c['temporaries'] / MIB:.2f} MiB/device", flush=True)
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--configs", default="smoke,small,default")
  parser.add_argument("--json", default=common.default_json("memory"))
  args = parser.parse_args()
  machine = common.machine()
  print(common.describe(machine), flush=True)
  results = []
  for v in args.configs.split(","):
    for strategy in STRATEGIES:
      results.append(measure("" if v == "default" else v, strategy))
  rows = []
  for r in results:
    s, c = r["state_per_device_bytes"], r["compiled_per_device_bytes"]
    rows.append([r["config"], r["strategy"], f"{r['num_params'] / 1e6:.3f}M", r["batch_size"],
                 f"{s['params'] / MIB:.3f}", f"{s['opt_state'] / MIB:.3f}",
                 f"{s['ema_params'] / MIB:.3f}", f"{s['total'] / MIB:.3f}",
                 f"{c['arguments'] / MIB:.3f}", f"{c['temporaries'] / MIB:.2f}",
                 f"{c['aliased'] / MIB:.3f}", f"{c['peak_bound'] / MIB:.2f}"])
  common.print_table(
      "Per-device memory of the compiled train step, 8 simulated CPU devices (MiB)",
      ["config", "strategy", "params", "global batch", "params/dev", "Adam state/dev", "EMA/dev",
       "state/dev", "arguments/dev (compiled)", "temporaries/dev (compiled)", "aliased/dev",
       "peak bound/dev"], rows)
  ratio_rows = []
  for variant in dict.fromkeys(r["config"] for r in results):
    dp, fs = [next(r for r in results if r["config"] == variant and r["strategy"] == s)
              for s in STRATEGIES]
    compiled = lambda part: (dp["compiled_per_device_bytes"][part]
                             / fs["compiled_per_device_bytes"][part])
    ratio_rows.append([variant,
                       f"{dp['state_per_device_bytes']['total'] / fs['state_per_device_bytes']['total']:.2f}",
                       f"{compiled('arguments'):.2f}", f"{compiled('temporaries'):.2f}"])
  common.print_table("Data-parallel / FSDP, per device",
                     ["config", "state", "arguments (compiled)", "temporaries (compiled)"], ratio_rows)
  common.write_json(args.json, {"machine": machine, "results": results, "args": vars(args)})


if __name__ == "__main__":
  tcmalloc.rerun_with_tcmalloc()  # the allocator the library's entry point runs with
  main()
