"""Where the small train step's compile time goes: tracing, lowering to StableHLO, XLA's compile.

  python3 -m benchmarks.compile_split [variant]      # prints one JSON line (seconds)
"""

import importlib
import json
import sys
import time

import jax

from mmdiff_jax.experiment import build_experiment
from mmdiff_jax.training import sharding as sharding_lib
from mmdiff_jax.training import state as state_lib


def main(variant: str = "small") -> dict:
  cfg = importlib.import_module("configs.imglabel").get_config(variant)
  experiment = build_experiment(cfg)
  mesh = sharding_lib.make_mesh(cfg.mesh, jax.devices()[:1])
  tx = state_lib.make_optimizer(cfg)
  abstract, shardings = state_lib.state_shardings(experiment.model, tx, mesh, fsdp=False, seed=0)
  jitted = state_lib.make_train_step(experiment.objective(), tx, ema_decay=cfg.training.ema_decay,
                                     mesh=mesh, shardings=shardings)
  batch = state_lib.example_batch(experiment.model, int(cfg.training.batch_size))
  t0 = time.perf_counter()
  traced = jitted.trace(abstract, batch)
  t1 = time.perf_counter()
  lowered = traced.lower()
  t2 = time.perf_counter()
  lowered.compile()
  t3 = time.perf_counter()
  return {"variant": variant, "trace_s": round(t1 - t0, 2), "lower_s": round(t2 - t1, 2),
          "compile_s": round(t3 - t2, 2), "stablehlo_lines": lowered.as_text().count("\n")}


if __name__ == "__main__":
  print(json.dumps(main(*sys.argv[1:2])))
