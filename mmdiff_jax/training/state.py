"""Train state, optimizer, and the jitted, sharded update step."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.flatten_util
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mmdiff_jax import random_streams
from mmdiff_jax.models import kinds
from mmdiff_jax.training import sharding as sharding_lib
from mmdiff_jax.training.losses import Objective
from mmdiff_jax.xla_defaults import jit_run_once

# MTDiffusion or Predictor: both have specs, z_shape and an `initialize(batch, z_t, t)` method.
Model = nn.Module


@flax.struct.dataclass
class TrainState:
  """step: int32 (); rng: the run's base key (uint32 (2,)); nonfinite_streak: int32 (), updates skipped
  in a row because the loss or the gradient norm was not finite."""
  step: jnp.ndarray
  params: Any
  ema_params: Any
  opt_state: Any
  rng: jnp.ndarray
  nonfinite_streak: jnp.ndarray


LR_SCHEDULES = ("constant", "cosine", "linear")


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warmup from 0 to optimizer.learning_rate over optimizer.warmup_steps, then constant or a
  cosine / linear decay to optimizer.end_learning_rate at training.num_steps (held after it).

  optax evaluates it at its own update count before the update: update n (1-based) takes the value at
  n - 1, so with a warmup the first update's rate is 0 and the last takes the value one step before
  the end. An update skipped as non-finite does not count: k skips shift the schedule by k steps."""
  opt = config.optimizer
  peak, warmup = float(opt.learning_rate), int(opt.warmup_steps)
  decay_steps = max(int(config.training.num_steps) - warmup, 1)
  after = {"constant": lambda: optax.constant_schedule(peak),
           "cosine": lambda: optax.cosine_decay_schedule(
               peak, decay_steps, alpha=float(opt.end_learning_rate) / peak if peak else 0.0),
           "linear": lambda: optax.linear_schedule(peak, float(opt.end_learning_rate), decay_steps),
           }[opt.schedule]()
  if warmup == 0:  # the first update at the full rate (a warmup from 0 would make it 0)
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], boundaries=[warmup])


class ElementwiseOptimizer(optax.GradientTransformationExtraArgs):
  """An optimizer that treats every parameter element alike, but for norms over all of them (as
  make_optimizer's clipping and unmasked AdamW do): the train step may run it on the parameters
  concatenated into one vector (optimizer_update). Others (a weight-decay mask by shape, LAMB's
  per-array trust ratio, Adafactor's factored moments) would silently change on one vector."""
  __slots__ = ()


def make_optimizer(config: ml_collections.ConfigDict) -> ElementwiseOptimizer:
  """AdamW on learning_rate_schedule(config), after global-norm gradient clipping."""
  opt = config.optimizer
  chained = optax.chain(
      optax.clip_by_global_norm(opt.grad_clip_norm),
      optax.adamw(learning_rate_schedule(config), b1=opt.b1, b2=opt.b2,
                  weight_decay=opt.weight_decay))
  return ElementwiseOptimizer(chained.init, chained.update)


def example_batch(model: Model, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
  """Shapes and dtypes of a batch for this model's modalities (for init and compilation)."""
  batch = {}
  for spec in model.specs:
    kind = kinds.get(spec.kind)
    batch[spec.feature] = jax.ShapeDtypeStruct(
        (batch_size, *kind.value_shape(spec, tuple(model.z_shape))), kind.dtype)
  return batch


def _init_boxed(model: Model, tx: optax.GradientTransformation, seed: int) -> TrainState:
  """The initial state with parameters still in their logical-name boxes."""
  batch = {k: jnp.zeros(v.shape, v.dtype) for k, v in example_batch(model, 1).items()}
  z = batch[model.specs[0].feature]
  params = model.init(random_streams.key(seed, "params"), batch, z, jnp.ones((1,), jnp.int32),
                      method="initialize")["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                    opt_state=tx.init(params), rng=random_streams.key(seed, "train_steps"),
                    nonfinite_streak=jnp.zeros((), jnp.int32))


def state_shardings(model: Model, tx, mesh: Mesh, *, fsdp: bool, seed: int = 0):
  """(abstract state with shardings, tree of NamedShardings): computed from shapes only."""
  abstract_boxed = jax.eval_shape(lambda: _init_boxed(model, tx, seed))
  shardings = sharding_lib.tree_shardings(abstract_boxed, mesh, fsdp=fsdp)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          nn.meta.unbox(abstract_boxed), shardings)
  return abstract, shardings


def create_train_state(model: Model, tx, shardings, seed: int) -> TrainState:
  """Initialises directly into the shardings: no device ever holds more than its shard."""
  def initial_state():  # named: compile logs and profiles show this name
    return nn.meta.unbox(_init_boxed(model, tx, seed))

  return jit_run_once(initial_state, out_shardings=shardings)()


def micro_batches(batch: dict, num: int, mesh: Mesh) -> dict:
  """(B, ...) arrays -> (num, B / num, ...): micro-batch i holds examples i, i + num, i + 2 num, ...,
  so that each micro-batch stays spread over every device (the batch is split over them in blocks)."""
  spec = NamedSharding(mesh, P(None, *sharding_lib.BATCH_SPEC))
  split = lambda x: jnp.swapaxes(x.reshape(x.shape[0] // num, num, *x.shape[1:]), 0, 1)
  return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(split(x), spec), batch)


def accumulated_grads(objective: Objective, params, batch: dict, rng: jax.Array, *, num: int,
                      mesh: Mesh):
  """(metrics, gradients) of the batch-mean loss, computed over `num` micro-batches in turn (a scan:
  the activations of one micro-batch live at a time). Micro-batch i draws its randomness from
  fold_in(rng, i); with num = 1 the batch is one micro-batch drawing from `rng` itself."""
  grad_fn = jax.value_and_grad(objective, has_aux=True)
  if num == 1:
    (_, metrics), grads = grad_fn(params, batch, rng)
    return metrics, grads

  def add(total, i_and_micro):
    i, micro = i_and_micro
    (_, metrics), grads = grad_fn(params, micro, jax.random.fold_in(rng, i))
    return jax.tree.map(jnp.add, total, (metrics, grads)), None

  micro = micro_batches(batch, num, mesh)
  first = jax.tree.map(lambda x: x[0], micro)
  (_, metrics_shape), grads_shape = jax.eval_shape(grad_fn, params, first, rng)
  zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), (metrics_shape, grads_shape))
  total, _ = jax.lax.scan(add, zeros, (jnp.arange(num), micro))
  # Equal micro-batches: the mean of their means is the batch mean.
  return jax.tree.map(lambda x: x / num, total)


def one_vector_update_applies(tx: optax.GradientTransformation, param_shardings, mesh: Mesh) -> bool:
  """Whether make_train_step updates the parameters as one vector: with an ElementwiseOptimizer, on
  CPU devices (where it was measured), with every parameter replicated (concatenating sharded
  parameters would gather them on every device), in a tree (a bare array is its own vector)."""
  return (isinstance(tx, ElementwiseOptimizer)
          and all(d.platform == "cpu" for d in mesh.devices.flat)
          and all(s.is_fully_replicated for s in jax.tree.leaves(param_shardings))
          and not jax.tree_util.treedef_is_leaf(jax.tree.structure(param_shardings)))


def _packed(tree, params_treedef):
  """(tree with each subtree shaped like the parameters (the parameters, their gradients, the EMA,
  an optimizer state's moments) raveled into one vector, unpack): unpack(new) restores each vector
  of a tree shaped like the packed one to its subtree's arrays, shapes and dtypes."""
  shaped = lambda x: jax.tree.structure(x) == params_treedef
  parts, outer = jax.tree.flatten(tree, is_leaf=shaped)
  raveled = [jax.flatten_util.ravel_pytree(p) if shaped(p) else (p, None) for p in parts]

  def unpack(new):
    return outer.unflatten([unravel(v) if unravel else v
                            for (_, unravel), v in zip(raveled, outer.flatten_up_to(new))])

  return outer.unflatten([v for v, _ in raveled]), unpack


def optimizer_update(tx: optax.GradientTransformation, grads, state: TrainState, *, loss: jax.Array,
                     ema_decay: float, one_vector: bool):
  """One optimizer and EMA update, kept only when it is finite.

  Returns (params, ema_params, opt_state, grad_norm, finite): the new trees where `finite` (the loss
  and the gradient norm are finite), the old ones otherwise. With one_vector, the per-parameter
  arithmetic (clipping, AdamW, EMA, the norm) runs on every parameter array concatenated into one
  vector, split back after the conditional: XLA then compiles a handful of elementwise kernels and one
  slice per array instead of a few kernels per array and a copy per array in the conditional (the
  small config has 173 arrays; split before the conditional, it compiled slower). On CPU that cuts the
  step's compile by about a quarter with its time level; the values agree to float rounding (the
  norm sums in another order)."""
  treedef = jax.tree.structure(state.params)
  pack = (lambda tree: _packed(tree, treedef)) if one_vector else (lambda tree: (tree, lambda x: x))
  old, unpacks = zip(*map(pack, (state.params, state.ema_params, state.opt_state)))
  packed_grads, _ = pack(grads)
  updates, opt_state = tx.update(packed_grads, old[2], old[0])
  params = optax.apply_updates(old[0], updates)
  ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, old[1], params)
  # The gradient norm is not finite when any gradient is not (or when the squares overflow: no
  # update worth taking either). One scalar test instead of a reduction per parameter array, each a
  # kernel to compile; the clipping computes the same norm, which XLA computes once.
  grad_norm = optax.tree.norm(packed_grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  # One conditional rather than a select per leaf: far fewer ops to compile.
  new = jax.lax.cond(finite, lambda: (params, ema, opt_state), lambda: old)
  return (*(unpack(n) for unpack, n in zip(unpacks, new)), grad_norm, finite)


def make_train_step(objective: Objective, tx: optax.GradientTransformation, *, ema_decay: float,
                    mesh: Mesh, shardings, grad_accum_steps: int = 1,
                    ) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """The jitted update: in/out shardings explicit, the old state donated.

  With grad_accum_steps = k the gradient of the whole batch is accumulated over k micro-batches of
  B / k examples (accumulated_grads): one optimizer update per batch, as with k = 1.
  A step whose loss or gradient norm is not finite (a gradient that is not, or squares beyond the
  float range) leaves parameters, EMA and optimizer state as they were, and increments
  nonfinite_streak (reset by the next finite step).
  The optimizer and EMA update on one concatenated vector (optimizer_update) where
  one_vector_update_applies: an ElementwiseOptimizer (make_optimizer's) on CPU devices, the
  parameters replicated.
  """
  one_vector = one_vector_update_applies(tx, shardings.params, mesh)

  def step_fn(state: TrainState, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    metrics, grads = accumulated_grads(objective, state.params, batch, rng, num=grad_accum_steps,
                                       mesh=mesh)
    params, ema, opt_state, grad_norm, finite = optimizer_update(
        tx, grads, state, loss=metrics["loss"], ema_decay=ema_decay, one_vector=one_vector)
    new_state = TrainState(
        step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state, rng=state.rng,
        nonfinite_streak=jnp.where(finite, 0, state.nonfinite_streak + 1))
    metrics = dict(metrics, grad_norm=grad_norm, skipped=1 - finite.astype(jnp.int32),
                   nonfinite_streak=new_state.nonfinite_streak)
    return new_state, metrics

  replicated = NamedSharding(mesh, P())
  return jax.jit(step_fn, in_shardings=(shardings, sharding_lib.batch_sharding(mesh)),
                 out_shardings=(shardings, replicated), donate_argnums=(0,))
