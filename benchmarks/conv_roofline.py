r"""The convolutions of a config's U-Net alone: forward + both gradients, each shape timed in isolation,
in JAX (XLA:CPU) and PyTorch (oneDNN), alternating with the matmul peak. The total says what fraction of
the matmul peak the train step could reach if everything but its convolutions were free.

  python3 -m benchmarks.conv_roofline --config=small
  python3 -m benchmarks.conv_roofline --config=small --no_torch --json=/tmp/conv_roofline.json
  # the convolutions lowered as one patches x kernel matmul (im2col) beside XLA's own:
  python3 -m benchmarks.conv_roofline --config=small --no_torch --im2col
  # XLA's forward, input gradient and kernel gradient each timed alone (which of the three is slow):
  python3 -m benchmarks.conv_roofline --config=small --parts
  # ... and the kernel gradient formulated as matmuls instead, beside XLA's own:
  python3 -m benchmarks.conv_roofline --config=small --no_torch --parts --kernel_grad_variants
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics

import jax
import jax.numpy as jnp

from benchmarks import common, setups
from mmdiff_jax import tcmalloc
from mmdiff_jax.experiment import build_experiment


def conv_shapes(config) -> collections.Counter:
  """{(input shape NHWC, kernel shape HWIO, strides): count} of the model's forward convolutions."""
  experiment = build_experiment(config)
  model = experiment.model
  seen = collections.Counter()
  original = jax.lax.conv_general_dilated

  def recording(lhs, rhs, window_strides, *args, **kwargs):
    seen[(tuple(lhs.shape), tuple(rhs.shape), tuple(window_strides))] += 1
    return original(lhs, rhs, window_strides, *args, **kwargs)

  batch = config.training.batch_size
  z = jnp.zeros((batch, *model.z_shape))
  t = jnp.ones((batch,), jnp.int32)
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), z, t, train=False))
  jax.lax.conv_general_dilated = recording
  try:
    jax.eval_shape(lambda p: model.apply(p, z, t, train=False), params)
  finally:
    jax.lax.conv_general_dilated = original
  return seen


# --parts contenders -> their column labels.
PARTS = {"jax_forward": "forward", "jax_input_grad": "input gradient", "jax_kernel_grad": "kernel gradient"}
# --kernel_grad_variants contenders -> their column labels.
KERNEL_GRAD_VARIANTS = {"kernel_grad_taps": "kernel gradient as one matmul per tap",
                        "kernel_grad_im2col": "kernel gradient as one patches matmul"}


def forward_flops(x_shape, k_shape, strides) -> float:
  b, h, w, _ = x_shape
  kh, kw, cin, cout = k_shape
  return 2.0 * b * (h // strides[0]) * (w // strides[1]) * kh * kw * cin * cout


def jax_conv(x_shape, k_shape, strides):
  x = jax.random.normal(jax.random.PRNGKey(0), x_shape)
  k = jax.random.normal(jax.random.PRNGKey(1), k_shape) * 0.1

  def f(x, k):
    y = jax.lax.conv_general_dilated(x, k, strides, "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.sum(y * y)

  grad = jax.jit(jax.grad(f, argnums=(0, 1)))
  return lambda: grad(x, k)


def jax_conv_parts(x_shape, k_shape, strides) -> dict:
  """{PARTS name: timed call}: XLA's three convolutions of jax_conv, each its own program (the
  gradients from the VJP of a fixed output cotangent)."""
  x = jax.random.normal(jax.random.PRNGKey(0), x_shape)
  k = jax.random.normal(jax.random.PRNGKey(1), k_shape) * 0.1
  conv = lambda x, k: jax.lax.conv_general_dilated(x, k, strides, "SAME",
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  dy = jax.random.normal(jax.random.PRNGKey(2), jax.eval_shape(conv, x, k).shape)
  forward = jax.jit(conv)
  input_grad = jax.jit(lambda x, k, dy: jax.vjp(lambda x: conv(x, k), x)[1](dy)[0])
  kernel_grad = jax.jit(lambda x, k, dy: jax.vjp(lambda k: conv(x, k), k)[1](dy)[0])
  return {"jax_forward": lambda: forward(x, k), "jax_input_grad": lambda: input_grad(x, k, dy),
          "jax_kernel_grad": lambda: kernel_grad(x, k, dy)}


def shifted_inputs(x, kernel_hw, strides) -> list:
  """The input each tap (i, j) of a SAME convolution sees, row-major over taps: kh * kw arrays
  (B, H', W', Cin), padded as XLA pads SAME (for stride 2 on an even size: none before, one after)."""
  (kh, kw), (sh, sw), (_, h, w, _) = kernel_hw, strides, x.shape
  pads = jax.lax.padtype_to_pads((h, w), (kh, kw), strides, "SAME")
  xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  ho, wo = -(-h // sh), -(-w // sw)
  return [xp[:, i:i + (ho - 1) * sh + 1:sh, j:j + (wo - 1) * sw + 1:sw]
          for i in range(kh) for j in range(kw)]


def check_same_as_xla(name, value, reference, x_shape, k_shape, strides):
  """A contender that computes something else would time the wrong thing."""
  error = float(jnp.max(jnp.abs(value - reference)) / jnp.max(jnp.abs(reference)))
  if error > 1e-4:
    raise AssertionError(f"{name} differs from XLA's result for input {x_shape}, kernel {k_shape}, "
                         f"strides {strides}: max relative error {error:.1e}")


def im2col_conv(x, k, strides):
  """A SAME convolution as one matmul: the kh * kw shifted copies of x side by side (B, H', W',
  kh * kw * Cin) times the kernel reshaped to (kh * kw * Cin, Cout)."""
  kh, kw, cin, cout = k.shape
  patches = jnp.concatenate(shifted_inputs(x, (kh, kw), strides), axis=-1)
  return jnp.einsum("bhwc,cd->bhwd", patches, k.reshape(kh * kw * cin, cout))


def kernel_grad_taps(x, dy, kernel_shape, strides):
  """The kernel gradient (kh, kw, Cin, Cout) as one (Cin, N) x (N, Cout) matmul per tap, N = B H' W'."""
  kh, kw, cin, cout = kernel_shape
  taps = [jnp.einsum("bhwc,bhwd->cd", shifted, dy)
          for shifted in shifted_inputs(x, (kh, kw), strides)]
  return jnp.stack(taps).reshape(kernel_shape)


def jax_kernel_grad_variants(x_shape, k_shape, strides) -> dict:
  """{KERNEL_GRAD_VARIANTS name: timed call}, each checked against XLA's kernel gradient first."""
  x = jax.random.normal(jax.random.PRNGKey(0), x_shape)
  k = jax.random.normal(jax.random.PRNGKey(1), k_shape) * 0.1
  conv = lambda x, k: jax.lax.conv_general_dilated(x, k, strides, "SAME",
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  dy = jax.random.normal(jax.random.PRNGKey(2), jax.eval_shape(conv, x, k).shape)
  variants = {
      "kernel_grad_taps": jax.jit(lambda x, k, dy: kernel_grad_taps(x, dy, k.shape, strides)),
      "kernel_grad_im2col": jax.jit(
          lambda x, k, dy: jax.vjp(lambda k: im2col_conv(x, k, strides), k)[1](dy)[0])}
  reference = jax.vjp(lambda k: conv(x, k), k)[1](dy)[0]
  for name, variant in variants.items():
    check_same_as_xla(name, variant(x, k, dy), reference, x_shape, k_shape, strides)
  return {name: (lambda variant=variant: variant(x, k, dy)) for name, variant in variants.items()}


def jax_im2col(x_shape, k_shape, strides):
  x = jax.random.normal(jax.random.PRNGKey(0), x_shape)
  k = jax.random.normal(jax.random.PRNGKey(1), k_shape) * 0.1
  check_same_as_xla("im2col_conv", im2col_conv(x, k, strides),
                    jax.lax.conv_general_dilated(x, k, strides, "SAME",
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC")),
                    x_shape, k_shape, strides)
  grad = jax.jit(jax.grad(lambda x, k: jnp.sum(im2col_conv(x, k, strides) ** 2), argnums=(0, 1)))
  return lambda: grad(x, k)


def torch_conv(x_shape, k_shape, strides, threads: int):
  import torch  # imported by main() through common.import_torch (OpenMP passive wait)
  b, h, w, cin = x_shape
  kh, kw, _, cout = k_shape
  x = torch.randn(b, cin, h, w, requires_grad=True)
  k = (torch.randn(cout, cin, kh, kw) * 0.1).requires_grad_()

  def run():
    torch.set_num_threads(threads)
    y = torch.nn.functional.conv2d(x, k, stride=strides, padding=kh // 2)
    (y * y).sum().backward()
    x.grad = None
    k.grad = None
  return run


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="small")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--no_torch", action="store_true")
  parser.add_argument("--im2col", action="store_true", help="also time im2col_conv")
  parser.add_argument("--parts", action="store_true",
                      help="also time XLA's forward, input gradient and kernel gradient alone")
  parser.add_argument("--kernel_grad_variants", action="store_true",
                      help="also time the kernel gradient formulated as matmuls (checked against XLA's)")
  parser.add_argument("--torch_threads", type=int, default=0, help="0: the core count")
  parser.add_argument("--json", default=common.default_json("conv_roofline"))
  args = parser.parse_args()
  timed_parts = {**(PARTS if args.parts else {}),
                 **(KERNEL_GRAD_VARIANTS if args.kernel_grad_variants else {})}

  machine = common.machine()
  if not args.no_torch:
    torch = common.import_torch("passive")
    args.torch_threads = args.torch_threads or len(os.sched_getaffinity(0))
    machine["torch"] = (f"{torch.__version__}, {args.torch_threads} threads, "
                        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
  print(common.describe(machine), flush=True)
  config = setups.get_config("" if args.config == "default" else args.config)
  shapes = conv_shapes(config)
  peak = common.MatmulPeak()
  rows, results = [], []
  totals = collections.Counter()
  for (x_shape, k_shape, strides), count in sorted(shapes.items(), key=lambda kv: -forward_flops(*kv[0]) * kv[1]):
    flops = 3 * forward_flops(x_shape, k_shape, strides)  # forward, input gradient, kernel gradient
    contenders = {"jax": jax_conv(x_shape, k_shape, strides), "matmul": peak}
    if not args.no_torch:
      contenders["torch"] = torch_conv(x_shape, k_shape, strides, args.torch_threads)
    if args.im2col:
      contenders["im2col"] = jax_im2col(x_shape, k_shape, strides)
    if args.parts:
      contenders.update(jax_conv_parts(x_shape, k_shape, strides))
    if args.kernel_grad_variants:
      contenders.update(jax_kernel_grad_variants(x_shape, k_shape, strides))
    timing = common.alternate(contenders, rounds=args.rounds, reps=args.reps)
    s = {k: statistics.median(v) for k, v in timing["seconds"].items()}
    peak_flops = peak.flops / s["matmul"]
    r = {"input": x_shape, "kernel": k_shape, "strides": strides, "count": count, "flops": flops,
         "seconds": s, "peak_flops_per_s": peak_flops, "load": timing["load"]}
    results.append(r)
    totals["flops"] += count * flops
    totals["jax"] += count * s["jax"]
    for name in ("torch", "im2col", *timed_parts):  # those timed
      if name in s:
        totals[name] += count * s[name]
    totals["peak_weighted"] += count * s["jax"] * peak_flops
    rows.append([f"{x_shape} * {k_shape[:2]} {k_shape[2]}->{k_shape[3]} /{strides[0]}", count,
                 f"{count * flops / 1e9:.2f}", f"{1e3 * count * s['jax']:.1f}",
                 f"{flops / s['jax'] / 1e9:.0f}", f"{flops / s['jax'] / peak_flops:.0%}"]
                + ([f"{1e3 * count * s['torch']:.1f}", f"{flops / s['torch'] / 1e9:.0f}"]
                   if "torch" in s else [])
                + ([f"{1e3 * count * s['im2col']:.1f}"] if "im2col" in s else [])
                + [f"{1e3 * count * s[part]:.1f} ({flops / 3 / s[part] / 1e9:.0f})"
                   for part in timed_parts])
  mean_peak = totals["peak_weighted"] / totals["jax"]
  rows.append(["all convolutions", sum(shapes.values()), f"{totals['flops'] / 1e9:.2f}",
               f"{1e3 * totals['jax']:.1f}", f"{totals['flops'] / totals['jax'] / 1e9:.0f}",
               f"{totals['flops'] / totals['jax'] / mean_peak:.0%}"]
              + ([f"{1e3 * totals['torch']:.1f}", f"{totals['flops'] / totals['torch'] / 1e9:.0f}"]
                 if not args.no_torch else [])
              + ([f"{1e3 * totals['im2col']:.1f}"] if args.im2col else [])
              + [f"{1e3 * totals[part]:.1f} ({totals['flops'] / 3 / totals[part] / 1e9:.0f})"
                 for part in timed_parts])
  common.print_table(
      f"Convolutions of config {args.config} (batch {config.training.batch_size}), forward + both "
      f"gradients, each alone; matmul peak {mean_peak / 1e9:.0f} GFLOP/s (time-weighted)",
      ["conv (NHWC input * kernel)", "per step", "GFLOP/step", "JAX ms/step", "JAX GFLOP/s",
       "JAX of peak"] + ([] if args.no_torch else ["torch ms/step", "torch GFLOP/s"])
      + (["im2col ms/step"] if args.im2col else [])
      + [f"JAX {label} alone ms/step (GFLOP/s)" for label in timed_parts.values()], rows)
  common.write_json(args.json, {"machine": machine, "config": args.config, "convs": results,
                                "total": dict(totals), "matmul_peak_flops_per_s": mean_peak,
                                "load_at_end": common.load(), "args": vars(args)})


if __name__ == "__main__":
  tcmalloc.rerun_with_tcmalloc()  # the allocator the library's entry point runs with
  main()
