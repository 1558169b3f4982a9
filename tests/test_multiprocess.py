"""Multi-process training with real processes on localhost, through the real command line.

Two processes x 4 simulated CPU devices (launch/local_multiprocess.sh, which runs
`python -m mmdiff_jax.main`) train the smoke config (with randomly masked training images) and
checkpoint; the result must equal a
single-process 8-device run of the same config, and the checkpoint must restore into one process with
2 devices and another mesh shape and keep training to the same result.

Every trainer runs as a subprocess (the pytest process itself already has 8 devices), in its own
process group, with a time limit; whatever is left of it is killed when the test ends.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import imglabel
from mmdiff_jax.experiment import build_experiment
from mmdiff_jax.training import distributed
from mmdiff_jax.training import sharding as sharding_lib
from mmdiff_jax.training import state as state_lib
from mmdiff_jax.training.checkpoint import Checkpointer

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAUNCHER = ROOT / "launch" / "local_multiprocess.sh"
K = 3  # steps per training segment
RUN_TIMEOUT_S = 420


@pytest.fixture(scope="module")
def subprocess_env(data_dir, tmp_path_factory):
  env = {k: v for k, v in os.environ.items() if not k.startswith(("MMDIFF_", "SLURM_", "OMPI_"))}
  env.update(
      # The launcher's processes run on the interpreter running the tests (a venv's python need not
      # be the python3 on PATH).
      PYTHON=sys.executable,
      TFDS_DATA_DIR=data_dir, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
      JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("xla_cache")),
      PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
  return env


def _run(cmd: list[str], env: dict[str, str], log: pathlib.Path,
         timeout: float = RUN_TIMEOUT_S) -> str:
  """Runs `cmd` in a new process group, bounded by `timeout`; returns its output (asserts rc 0)."""
  with open(log, "w") as out:
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
      rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      rc = None
    finally:
      if proc.poll() is None:  # timed out, or the test was interrupted
        os.killpg(proc.pid, signal.SIGTERM)
        try:
          proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
          pass
      try:  # the launcher's children too (same process group), should any be left
        os.killpg(proc.pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
      proc.wait()
  text = log.read_text()
  tail = "\n".join(text.splitlines()[-60:])
  assert rc is not None, f"{' '.join(cmd)} did not finish in {timeout} s; output tail:\n{tail}"
  assert rc == 0, f"{' '.join(cmd)} exited with {rc}; output tail:\n{tail}"
  return text


def _main_flags(workdir, num_steps: int, mesh: dict[str, int], fsdp: bool, *,
                sample_and_eval: bool = False) -> list[str]:
  flags = [f"--config={ROOT / 'configs' / 'imglabel.py'}:smoke", f"--workdir={workdir}",
           f"--config.training.num_steps={num_steps}", f"--config.training.save_every={K}",
           f"--config.training.log_every={K}", f"--config.mesh.data={mesh['data']}",
           f"--config.mesh.fsdp={mesh['fsdp']}", f"--config.fsdp={fsdp}",
           # Random masks replace half the training images by masked copies: if an example's mask
           # depended on which process reads it, the two-process run would train on other images.
           "--config.data.derived=('random_square_mask','masked_image_augmentation')"]
  if sample_and_eval:  # small, but every process takes part in sampling and evaluation
    flags += ["--config.sampling.num_samples=10", "--config.sampling.sampler_steps=2",
              "--config.eval.after_training=('label_accuracy',)", "--config.eval.num_examples=16",
              "--config.eval.batch_size=16", "--config.eval.sampler_steps=2"]
  else:
    flags += ["--config.sampling.num_samples=0", "--config.eval.after_training=()"]
  return flags


def _single_process(env, local_devices: int, flags: list[str], log: pathlib.Path) -> str:
  env = dict(env, MMDIFF_DISTRIBUTED="single", MMDIFF_LOCAL_DEVICE_COUNT=str(local_devices))
  return _run([sys.executable, "-m", "mmdiff_jax.main", *flags], env, log)


def _restore(workdir, step: int):
  """(host copy of the train state, data-iterator state) at `step`, restored in this process."""
  config = imglabel.get_config("smoke")
  experiment = build_experiment(config)
  mesh = sharding_lib.make_mesh(config.mesh)
  tx = state_lib.make_optimizer(config)
  abstract, _ = state_lib.state_shardings(experiment.model, tx, mesh, fsdp=False)
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=3)
  try:
    state, data_state = checkpointer.restore(step, abstract)
  finally:
    checkpointer.close()
  return jax.device_get(state), data_state


def _assert_states_close(a, b, rtol, atol):
  assert int(a.step) == int(b.step)
  np.testing.assert_array_equal(a.rng, b.rng)
  for name in ("params", "ema_params", "opt_state"):
    flat_a = jax.tree_util.tree_leaves_with_path(getattr(a, name))
    flat_b = jax.tree.leaves(getattr(b, name))
    assert len(flat_a) == len(flat_b)
    for (path, x), y in zip(flat_a, flat_b):
      np.testing.assert_allclose(x, y, rtol=rtol, atol=atol,
                                 err_msg=f"{name}{jax.tree_util.keystr(path)}")


def test_two_processes_equal_one_and_restore_into_another_topology(subprocess_env, tmp_path):
  main_py = (ROOT / "mmdiff_jax" / "main.py").read_text()
  assert "distributed.initialize(" in main_py, (
      "mmdiff_jax/main.py must call distributed.initialize(config.distributed) before any JAX use")
  env = subprocess_env
  mesh_2x4 = {"data": 2, "fsdp": 4}

  # 1. Reference: one process, 8 devices, the same mesh; 2K steps, checkpoints at K and 2K.
  single = tmp_path / "single"
  out = _single_process(env, 8, _main_flags(single, 2 * K, mesh_2x4, True), tmp_path / "single.log")
  assert "over 8 cpu devices, 1 process(es)" in out, (
      "the single-process run did not get 8 simulated devices: does mmdiff_jax/main.py call "
      "distributed.initialize(config.distributed) first?\n" + out[-3000:])
  # Library INFO logs (absl's "I1201 12:00:00.000 ..." lines: orbax writes ~25 per checkpoint) are
  # off unless --library_logs.
  assert not re.search(r"^I\d{4} \d\d:\d\d", out, re.M), out[-3000:]

  # 2. Two processes x 4 devices through the launcher: K steps, then samples and evaluation.
  multi = tmp_path / "multi"
  out = _run(["bash", str(LAUNCHER), "--num_processes=2", "--devices_per_process=4",
              f"--timeout={RUN_TIMEOUT_S - 30}", "--grace=5", "--",
              *_main_flags(multi, K, mesh_2x4, True, sample_and_eval=True)],
             env, tmp_path / "multi.log")
  for p in (0, 1):
    assert f"[p{p}] Mesh {{'data': 2, 'fsdp': 4}} over 8 cpu devices, 2 process(es)" in out, out[-3000:]
  assert f"[p0] step {K}/{K}" in out and f"[p1] step {K}/" not in out  # process 0 logs
  assert "all 2 process(es) finished" in out
  metrics = [json.loads(line) for line in open(multi / "metrics.jsonl")]
  assert [m["step"] for m in metrics if "loss" in m] == [K]  # written once, by process 0
  assert metrics[-1]["eval/label_accuracy_examples"] == 16
  assert sorted(os.listdir(multi / "samples")) == [f"class_conditional_step{K}.png",
                                                   f"joint_step{K}.png"]
  assert Checkpointer(str(multi / "checkpoints"), max_to_keep=3).all_steps() == [K]

  ref_k, ref_data_k = _restore(single, K)
  got_k, got_data_k = _restore(multi, K)
  assert got_data_k == ref_data_k  # the same global input position
  _assert_states_close(got_k, ref_k, rtol=1e-5, atol=1e-6)

  # 3. Resume the 2-process checkpoint in one process with 2 devices and a {data: 1, fsdp: 2} mesh.
  out = _single_process(env, 2, _main_flags(multi, 2 * K, {"data": 1, "fsdp": 2}, True),
                        tmp_path / "resume.log")
  assert "Mesh {'data': 1, 'fsdp': 2} over 2 cpu devices, 1 process(es)" in out
  assert f"Resuming from step {K}" in out and f"step {2 * K}/{2 * K}" in out
  ref, ref_data = _restore(single, 2 * K)
  got, got_data = _restore(multi, 2 * K)
  assert got_data == ref_data
  _assert_states_close(got, ref, rtol=1e-4, atol=1e-5)
  assert not np.allclose(got.params["backbone"]["Conv_0"]["kernel"],
                         got_k.params["backbone"]["Conv_0"]["kernel"])  # it did keep training

  # 4. A two-process FSDP run starting from the single-process run's parameters (init_from): each
  # process reads them whole and fills its own shards.
  started = tmp_path / "started"
  out = _run(["bash", str(LAUNCHER), "--num_processes=2", "--devices_per_process=4",
              f"--timeout={RUN_TIMEOUT_S - 30}", "--grace=5", "--",
              *_main_flags(started, 1, mesh_2x4, True), f"--config.training.init_from={single}"],
             env, tmp_path / "started.log")
  for p in (0, 1):
    assert f"[p{p}] Initialised " in out and f"from {single} step {2 * K}" in out, out[-3000:]
  assert Checkpointer(str(started / "checkpoints"), max_to_keep=3).all_steps() == [1]


def _preempt_one_process(env, workdir, flags, log, *, when: str, after_s: float) -> int:
  """Runs the launcher on 2 processes until both printed `when`, waits `after_s`, sends SIGTERM to
  one of them; asserts both saved the same step and exited; returns that step."""
  with open(log, "w") as out:
    launcher = subprocess.Popen(
        ["bash", str(LAUNCHER), "--num_processes=2", "--devices_per_process=1",
         f"--timeout={RUN_TIMEOUT_S - 30}", "--grace=60", "--", *flags],
        cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
  try:
    deadline = time.monotonic() + RUN_TIMEOUT_S - 60
    while log.read_text().count(when) < 2:
      assert launcher.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
      time.sleep(0.2)
    time.sleep(after_s)
    workers = [int(p) for p in subprocess.run(["pgrep", "-f", f"workdir={workdir} "],
                                              capture_output=True, text=True).stdout.split()]
    workers = [p for p in workers if p != launcher.pid]
    assert len(workers) == 2, workers
    os.kill(workers[1], signal.SIGTERM)
    assert launcher.wait(timeout=180) == 0, log.read_text()[-3000:]
  finally:
    if launcher.poll() is None:
      os.killpg(launcher.pid, signal.SIGKILL)
      launcher.wait()
  text = log.read_text()
  saved = {p: re.findall(rf"\[p{p}\] Received SIGTERM: saved a checkpoint at step (\d+)", text)
           for p in (0, 1)}
  assert len(saved[0]) == 1 and saved[0] == saved[1], text[-3000:]
  return int(saved[0][0])


def test_sigterm_to_one_process_saves_the_same_step_on_all_between_logged_steps(subprocess_env,
                                                                               tmp_path):
  """A preemption notice reaches one process of several (as a scheduler may send it): every process
  saves the same step and exits, right after the step it arrived at, not at the next logged step
  (which may come after the scheduler's SIGKILL); also when it arrives while a resumed run is still
  restoring or compiling, before its first step."""
  workdir = tmp_path / "preempted"
  flags = _main_flags(workdir, 100_000, {"data": 2, "fsdp": 1}, False)
  flags += ["--config.training.log_every=100000", "--config.training.save_every=100000"]
  step = _preempt_one_process(subprocess_env, workdir, flags, tmp_path / "first.log",
                              when="training steps 0 -> 100000", after_s=5)
  assert 0 < step < 100_000
  assert Checkpointer(str(workdir / "checkpoints"), max_to_keep=3).all_steps() == [step]
  # The steps since the last logged one are logged at the stop: a resumed run does not train them.
  rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  assert [row["step"] for row in rows if "loss" in row] == [step], rows
  resumed = _preempt_one_process(subprocess_env, workdir, flags, tmp_path / "resumed.log",
                                 when=f"Resuming from step {step}", after_s=0)
  assert step < resumed < 100_000
  assert Checkpointer(str(workdir / "checkpoints"), max_to_keep=3).all_steps() == [step, resumed]


def test_launcher_rejects_bad_flags():
  def launch(*args):
    return subprocess.run(["bash", str(LAUNCHER), *args], capture_output=True, text=True,
                          timeout=60)
  for args, message in [
      ((), "--num_processes=N is required"),
      (("--num_processes=0", "--", "x"), "--num_processes must be a positive integer"),
      (("--num_processes=2", "--devices_per_process=two", "--", "x"),
       "--devices_per_process must be a positive integer"),
      (("--num_processes=2", "--port=80", "--", "x"), "--port must be an integer in 1024..65535"),
      (("--num_processes=2", "--bogus=1", "--", "x"), "unknown flag '--bogus=1'"),
      (("--num_processes=2", "--config=x"), "unknown flag '--config=x'"),
      (("--num_processes=2",), "missing '--'"),
  ]:
    result = launch(*args)
    assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
  assert "Usage:" in launch("--help").stdout


def test_launcher_stops_all_processes_when_one_fails(subprocess_env, tmp_path):
  """Process 1 fails at once; process 0 would wait for it forever: the launcher stops it."""
  result = subprocess.run(
      ["bash", str(LAUNCHER), "--num_processes=2", "--devices_per_process=1", "--timeout=120",
       "--grace=2", "--module=tests.multiprocess_worker", "--", "fail_on=1"],
      cwd=ROOT, env=subprocess_env, capture_output=True, text=True, timeout=180)
  assert result.returncode == 3, result.stderr
  assert "process 1 exited with status 3; stopping all processes" in result.stderr
  assert "[p1] failing on purpose" in result.stdout


def test_launcher_interrupted_stops_every_process(subprocess_env, tmp_path):
  log = tmp_path / "launcher.log"
  # As from an interactive shell: a SIGINT that is ignored when bash starts cannot be trapped, and
  # pytest has it ignored when started in the background by a script. A handler (unlike SIG_IGN) is
  # reset to the default by exec, so install one around the start (no preexec_fn: JAX has threads).
  previous = signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    with open(log, "w") as out:
      launcher = subprocess.Popen(
          ["bash", str(LAUNCHER), "--num_processes=2", "--devices_per_process=1", "--timeout=120",
           "--grace=3", "--module=tests.multiprocess_worker", "--", "hang=1"],
          cwd=ROOT, env=subprocess_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
  finally:
    signal.signal(signal.SIGINT, previous)
  try:
    deadline = time.monotonic() + 90
    while log.read_text().count(" pid ") < 2:
      assert launcher.poll() is None and time.monotonic() < deadline, log.read_text()
      time.sleep(0.5)
    pids = [int(p) for p in re.findall(r" pid (\d+)", log.read_text())]
    os.kill(launcher.pid, signal.SIGINT)  # what Ctrl-C sends
    assert launcher.wait(timeout=30) == 130
  finally:
    if launcher.poll() is None:
      os.killpg(launcher.pid, signal.SIGKILL)
      launcher.wait()
  assert "interrupted; stopping all processes" in log.read_text()
  for pid in pids:
    with pytest.raises(ProcessLookupError):
      os.kill(pid, 0)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_cluster_mode_reads_slurm_variables(subprocess_env, tmp_path):
  """Two processes that only have srun's variables (as under srun) find each other through JAX."""
  port = str(_free_port())  # JAX would derive one from the job id
  procs = []
  try:
    for i in range(2):
      env = dict(subprocess_env, SLURM_JOB_ID="4242", SLURM_STEP_NODELIST="localhost",
                 SLURM_NTASKS="2", SLURM_PROCID=str(i), SLURM_LOCALID=str(i),
                 JAX_COORDINATOR_PORT=port, MMDIFF_LOCAL_DEVICE_COUNT="2")
      with open(tmp_path / f"p{i}.log", "w") as log:
        procs.append(subprocess.Popen([sys.executable, "-m", "tests.multiprocess_worker"],
                                      cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True))
    for proc in procs:
      proc.wait(timeout=120)
  finally:
    for proc in procs:
      if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
  for i, proc in enumerate(procs):
    out = (tmp_path / f"p{i}.log").read_text()
    assert proc.returncode == 0, out[-3000:]
    assert "distributed: cluster (coordinator and process ids from the cluster environment, 2 " \
           "simulated CPU devices per process; detected slurm)" in out, out[-3000:]
    assert f"process {i} of 2: 4 devices, 2 local" in out and "gathered [0, 1]" in out


@pytest.mark.parametrize("env, expected", [
    ({}, ("single", None, None)),
    ({"MMDIFF_COORDINATOR": "10.0.0.1:1234", "MMDIFF_NUM_PROCESSES": "4",
      "MMDIFF_PROCESS_ID": "3"}, ("explicit", 4, 3)),
    ({"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "8",
      "SLURM_PROCID": "5", "SLURM_LOCALID": "1"}, ("cluster", None, None)),
    ({"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n1", "SLURM_NTASKS": "1", "SLURM_PROCID": "0",
      "SLURM_LOCALID": "0"}, ("single", None, None)),
    ({"MMDIFF_DISTRIBUTED": "cluster"}, ("cluster", None, None)),
])
def test_distributed_plan(env, expected):
  info = distributed.plan(imglabel.get_config("smoke").get("distributed"), env)
  assert (info.mode, info.num_processes, info.process_id) == expected


@pytest.mark.parametrize("config, env, message", [
    ({"num_processes": 2}, {}, r"config.distributed.num_processes \(\$MMDIFF_NUM_PROCESSES\) is "
     r"set, so config.distributed.coordinator_address .* must be set too"),
    ({"coordinator_address": "h:1", "num_processes": 2, "process_id": 2}, {},
     r"config.distributed.process_id: got 2; expected 0 <= process_id < "
     r"config.distributed.num_processes=2"),
    ({"coordinator_address": "nohostport", "num_processes": 2, "process_id": 0}, {},
     r"config.distributed.coordinator_address .*expected 'host:port'"),
    ({"mode": "cluster", "process_id": 0}, {}, r"mode='cluster' .* config.distributed.process_id"),
    ({"mode": "single"}, {"MMDIFF_COORDINATOR": "h:1", "MMDIFF_NUM_PROCESSES": "2",
                          "MMDIFF_PROCESS_ID": "0"}, r"mode='single' runs one process"),
    ({"mode": "explicit"}, {}, r"mode='explicit', so config.distributed.coordinator_address"),
    ({"mode": "bogus"}, {}, r"config.distributed.mode .*expected one of"),
    ({"process_id": 0}, {"MMDIFF_PROCESS_ID": "1"},
     r"config.distributed.process_id=0 but \$MMDIFF_PROCESS_ID=1"),
    ({}, {"MMDIFF_NUM_PROCESSES": "two"}, r"\$MMDIFF_NUM_PROCESSES: expected an integer"),
    ({"local_device_count": 0}, {}, r"config.distributed.local_device_count: got 0"),
    ({"typo": 1}, {}, r"config.distributed: unknown keys \['typo'\]"),
])
def test_distributed_settings_errors_name_the_keys(config, env, message):
  with pytest.raises(ValueError, match=message):
    distributed.plan(config, env)


def test_initialize_refuses_multiprocess_after_the_backend_started():
  jax.devices()  # the pytest process's backend is up
  with pytest.raises(RuntimeError, match="must run before any JAX call"):
    distributed.initialize({"coordinator_address": "127.0.0.1:1234", "num_processes": 2,
                            "process_id": 0})
  info = distributed.initialize({"local_device_count": jax.local_device_count()})
  assert info.mode == "single"  # nothing to do: same device count, one process
