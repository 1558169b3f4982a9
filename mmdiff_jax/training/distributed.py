"""Multi-process start-up: `initialize(config.distributed)` runs first, before any JAX backend use.

One training command runs unchanged on one machine, a TPU pod slice, a SLURM GPU cluster, or N
processes on localhost; this module decides which and calls `jax.distributed.initialize` when more
than one process takes part.

config.distributed (each key may also come from an environment variable, which is what the launch
scripts in launch/ set; a key set in both places must agree):

  mode                 MMDIFF_DISTRIBUTED      "auto" (default) | "single" | "cluster" | "explicit"
  coordinator_address  MMDIFF_COORDINATOR      "host:port" of process 0 (explicit mode)
  num_processes        MMDIFF_NUM_PROCESSES    processes in the job (explicit mode)
  process_id           MMDIFF_PROCESS_ID       this process, 0 .. num_processes - 1 (explicit mode)
  local_device_count   MMDIFF_LOCAL_DEVICE_COUNT  simulated CPU devices per process (CPU only;
                                               sets jax_num_cpu_devices), None: leave as is
  initialization_timeout  (config only)        seconds to wait for all processes (default 300)

Modes:
  single:   one process; jax.distributed is not started.
  cluster:  bare `jax.distributed.initialize()`: JAX reads the coordinator, process count and id
            from the environment (Cloud TPU VM metadata, SLURM's srun variables, Open MPI).
  explicit: coordinator_address, num_processes and process_id must all be given.
  auto:     explicit if any of those three is given; else cluster on a Cloud TPU VM, inside an srun
            step with SLURM_NTASKS > 1, or under mpirun with more than one rank; else single.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Mapping

import jax

from mmdiff_jax.errors import BadValueError

MODES = ("auto", "single", "cluster", "explicit")
ENV_VARS = {
    "mode": "MMDIFF_DISTRIBUTED",
    "coordinator_address": "MMDIFF_COORDINATOR",
    "num_processes": "MMDIFF_NUM_PROCESSES",
    "process_id": "MMDIFF_PROCESS_ID",
    "local_device_count": "MMDIFF_LOCAL_DEVICE_COUNT",
}
_INT_KEYS = ("num_processes", "process_id", "local_device_count")
_EXPLICIT_KEYS = ("coordinator_address", "num_processes", "process_id")
_SLURM_STEP_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
                    "SLURM_LOCALID")


@dataclasses.dataclass(frozen=True)
class DistributedInfo:
  """What `initialize` did. num_processes / process_id are None where JAX detected them (cluster
  mode): read jax.process_count() / jax.process_index() once the backend is up."""
  mode: str  # "single", "cluster" or "explicit": the mode actually used
  reason: str  # why that mode, for the start-up log
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  local_device_count: int | None = None

  def describe(self) -> str:
    if self.mode == "explicit":
      where = (f"process {self.process_id} of {self.num_processes}, coordinator "
               f"{self.coordinator_address}")
    elif self.mode == "cluster":
      where = "coordinator and process ids from the cluster environment"
    else:
      where = "one process"
    devices = (f", {self.local_device_count} simulated CPU devices per process"
               if self.local_device_count else "")
    return f"distributed: {self.mode} ({where}{devices}; {self.reason})"


def _key(name: str) -> str:
  return f"config.distributed.{name}"


def _parse_int(name: str, value: Any, source: str) -> int:
  if isinstance(value, bool):
    raise BadValueError(f"{source}: expected an integer, got {value!r}")
  try:
    return int(str(value).strip()) if isinstance(value, str) else int(value)
  except (TypeError, ValueError):
    raise BadValueError(f"{source}: expected an integer, got {value!r}") from None


def resolve_settings(distributed_config: Mapping[str, Any] | None,
                     environ: Mapping[str, str] | None = None) -> dict[str, Any]:
  """Merges config.distributed with the MMDIFF_* environment variables and validates the types.

  Returns a dict with every key of ENV_VARS plus initialization_timeout (None where unset).

  Raises:
    ValueError naming the config key (and environment variable) on unknown keys, bad values, or a
    key set differently in the config and the environment.
  """
  environ = os.environ if environ is None else environ
  cfg = dict(distributed_config or {})
  known = set(ENV_VARS) | {"initialization_timeout"}
  unknown = set(cfg) - known
  if unknown:
    raise BadValueError(f"config.distributed: unknown keys {sorted(unknown)}; expected "
                        f"{sorted(known)}")
  settings: dict[str, Any] = {}
  for name, env_name in ENV_VARS.items():
    from_config = cfg.get(name)
    if name == "mode" and from_config == "auto":
      from_config = None  # the default: the environment may choose
    from_env = environ.get(env_name) or None
    if name in _INT_KEYS:
      if from_config is not None:
        from_config = _parse_int(name, from_config, _key(name))
      if from_env is not None:
        from_env = _parse_int(name, from_env, f"${env_name}")
    if from_config is not None and from_env is not None and from_config != from_env:
      raise BadValueError(f"{_key(name)}={from_config!r} but ${env_name}={from_env!r}; set one of "
                          f"them (or make them agree)")
    settings[name] = from_config if from_config is not None else from_env
  settings["mode"] = settings["mode"] or "auto"
  timeout = cfg.get("initialization_timeout")
  settings["initialization_timeout"] = (
      300 if timeout is None else _parse_int("initialization_timeout", timeout,
                                             _key("initialization_timeout")))
  _validate(settings)
  return settings


def _validate(s: dict[str, Any]) -> None:
  if s["mode"] not in MODES:
    raise BadValueError(f"{_key('mode')} (${ENV_VARS['mode']}): got {s['mode']!r}; expected one of "
                        f"{list(MODES)}")
  given = [k for k in _EXPLICIT_KEYS if s[k] is not None]
  names = lambda keys: ", ".join(f"{_key(k)} (${ENV_VARS[k]})" for k in keys)
  if s["mode"] == "single":
    if s["num_processes"] not in (None, 1) or s["coordinator_address"] is not None:
      raise BadValueError(f"{_key('mode')}='single' runs one process, but {names(given)} "
                          f"{'is' if len(given) == 1 else 'are'} set: use mode 'explicit' or 'auto', "
                          f"or unset them")
  if s["mode"] == "cluster" and given:
    raise BadValueError(f"{_key('mode')}='cluster' takes the coordinator and process ids from the "
                        f"cluster environment, but {names(given)} {'is' if len(given) == 1 else 'are'}"
                        f" set: use mode 'explicit', or unset them")
  if s["mode"] == "explicit" or (s["mode"] == "auto" and given):
    missing = [k for k in _EXPLICIT_KEYS if s[k] is None]
    if missing:
      why = (f"{_key('mode')}='explicit'" if s["mode"] == "explicit"
             else f"{names(given)} {'is' if len(given) == 1 else 'are'} set")
      raise BadValueError(f"{why}, so {names(missing)} must be set too (all of coordinator_address, "
                          f"num_processes and process_id, or none of them)")
  if s["num_processes"] is not None and s["num_processes"] < 1:
    raise BadValueError(f"{_key('num_processes')}: got {s['num_processes']}; expected >= 1")
  if s["process_id"] is not None:
    n = s["num_processes"]
    if s["process_id"] < 0 or (n is not None and s["process_id"] >= n):
      raise BadValueError(f"{_key('process_id')}: got {s['process_id']}; expected 0 <= process_id < "
                          f"{_key('num_processes')}={n}")
  address = s["coordinator_address"]
  if address is not None and not re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[^\s:\[\]]+):\d{1,5}",
                                               str(address)):
    raise BadValueError(f"{_key('coordinator_address')} (${ENV_VARS['coordinator_address']}): got "
                        f"{address!r}; expected 'host:port', e.g. '10.0.0.1:1234'")
  if address is not None and not 0 < int(str(address).rsplit(":", 1)[1]) < 65536:
    raise BadValueError(f"{_key('coordinator_address')}: port out of range in {address!r}")
  if s["local_device_count"] is not None and s["local_device_count"] < 1:
    raise BadValueError(f"{_key('local_device_count')}: got {s['local_device_count']}; "
                        f"expected >= 1 (or None)")
  if s["initialization_timeout"] < 1:
    raise BadValueError(f"{_key('initialization_timeout')}: got {s['initialization_timeout']}; "
                        f"expected >= 1 (seconds)")


def _on_cloud_tpu_vm() -> bool:
  # Set by `import jax` when libtpu finds TPU chips (JAX's own test; not public API).
  try:
    from jax._src import cloud_tpu_init
  except ImportError:  # pragma: no cover - layout of a future JAX
    return False
  return bool(getattr(cloud_tpu_init, "running_in_cloud_tpu_vm", False))


def detect_cluster(environ: Mapping[str, str] | None = None) -> str | None:
  """The multi-process environment JAX can configure itself from, or None.

  "slurm": inside an srun step with more than one task; "mpi": an Open MPI launch with more than one
  rank; "tpu": a Cloud TPU VM (one host or a pod slice: JAX reads the worker list from metadata).
  """
  environ = os.environ if environ is None else environ
  def count(name):
    try:
      return int(environ.get(name, "1"))
    except ValueError:
      return 1
  if all(v in environ for v in _SLURM_STEP_VARS) and count("SLURM_NTASKS") > 1:
    return "slurm"
  if "OMPI_MCA_orte_hnp_uri" in environ and count("OMPI_COMM_WORLD_SIZE") > 1:
    return "mpi"
  if _on_cloud_tpu_vm():
    return "tpu"
  return None


def plan(distributed_config: Mapping[str, Any] | None,
         environ: Mapping[str, str] | None = None) -> DistributedInfo:
  """What `initialize` will do, without doing it (pure: no JAX calls)."""
  s = resolve_settings(distributed_config, environ)
  mode, reason = s["mode"], f"{_key('mode')}={s['mode']!r}"
  if mode == "auto":
    if any(s[k] is not None for k in _EXPLICIT_KEYS):
      mode, reason = "explicit", "coordinator and process ids given"
    else:
      cluster = detect_cluster(environ)
      if cluster:
        mode, reason = "cluster", f"detected {cluster}"
      else:
        mode, reason = "single", "no multi-process launcher detected"
  if mode == "explicit" and s["num_processes"] == 1:
    mode, reason = "single", "num_processes=1"
  return DistributedInfo(
      mode=mode, reason=reason,
      coordinator_address=s["coordinator_address"] if mode == "explicit" else None,
      num_processes=s["num_processes"] if mode != "cluster" else None,
      process_id=s["process_id"] if mode != "cluster" else None,
      local_device_count=s["local_device_count"])


def _backends_started() -> bool:
  try:
    from jax._src import xla_bridge
  except ImportError:  # pragma: no cover
    return False
  return bool(getattr(xla_bridge, "backends_are_initialized", lambda: False)())


def initialize(distributed_config: Mapping[str, Any] | None = None) -> DistributedInfo:
  """Starts JAX's distributed runtime when more than one process takes part (see module doc).

  Call it first thing in the program: before any jax.devices(), computation or device_put. Calling
  it again after a successful multi-process start is a no-op.

  Raises:
    ValueError naming the config key on inconsistent settings.
    RuntimeError if multi-process (or simulated devices) is asked for after the JAX backend started.
  """
  info = plan(distributed_config)
  if jax.distributed.is_initialized():
    return dataclasses.replace(info, reason=info.reason + "; already initialized")
  started = _backends_started()
  if info.local_device_count is not None:
    if started:
      if jax.local_device_count() != info.local_device_count or jax.devices()[0].platform != "cpu":
        raise RuntimeError(
            f"{_key('local_device_count')}={info.local_device_count} must be applied before JAX "
            f"starts its backend, but {jax.local_device_count()} {jax.devices()[0].platform} "
            f"device(s) are already up: call distributed.initialize first")
    else:
      jax.config.update("jax_num_cpu_devices", info.local_device_count)
  if info.mode == "single":
    return info
  if started:
    raise RuntimeError(f"distributed.initialize ({info.mode} mode) must run before any JAX call "
                       f"that starts the backend (jax.devices(), a computation, device_put)")
  timeout = resolve_settings(distributed_config)["initialization_timeout"]
  if info.mode == "cluster":
    try:
      jax.distributed.initialize(initialization_timeout=timeout)
    except ValueError as e:
      raise BadValueError(
          f"{_key('mode')}='cluster': JAX could not read the coordinator and process ids from the "
          f"environment ({e}). Launch under srun / mpirun / on a TPU VM, or use mode 'explicit' "
          f"with coordinator_address, num_processes and process_id") from e
    return info
  if info.local_device_count is not None:
    # Simulated CPU devices talk over gloo (the default in recent JAX; older ones had none).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
      coordinator_address=info.coordinator_address, num_processes=info.num_processes,
      process_id=info.process_id, initialization_timeout=timeout,
      # Simulated CPU devices: do not let a surrounding SLURM/MPI job restrict the devices.
      cluster_detection_method="deactivate" if info.local_device_count else None)
  return info


_barrier_counts: dict[str, int] = {}


def barrier(name: str, timeout_s: float = 1800) -> None:
  """Waits until every process reaches `barrier(name)` (no-op with one process).

  Goes through the distributed runtime's coordination service, not through device collectives, so
  it may come before the first collective. On CPU that matters: gloo gives up when a process reaches
  its first collective more than 30 s after another (e.g. one process compiled more slowly).
  """
  if jax.process_count() == 1:
    return
  from jax._src import distributed as jax_distributed  # the runtime client has no public handle
  client = jax_distributed.global_state.client
  if client is None:
    raise RuntimeError("distributed.barrier: several processes but no distributed runtime client")
  count = _barrier_counts[name] = _barrier_counts.get(name, 0) + 1
  client.wait_at_barrier(f"mmdiff_jax/{name}/{count}", timeout_in_ms=int(timeout_s * 1000))


__all__ = ["DistributedInfo", "ENV_VARS", "MODES", "barrier", "detect_cluster", "initialize",
           "plan", "resolve_settings"]
