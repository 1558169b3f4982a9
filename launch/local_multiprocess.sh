#!/usr/bin/env bash
# Runs N JAX processes on this machine, each with simulated CPU devices, as one multi-process job
# (the same code path as a TPU pod or a GPU cluster; CPU collectives go over gloo).
#
# Usage:
#   launch/local_multiprocess.sh --num_processes=N [--devices_per_process=D] [--port=PORT]
#       [--timeout=SECONDS] [--grace=SECONDS] [--module=MODULE] [--python=PYTHON] -- ARGS...
#
#   --num_processes        processes to start (>= 1), required
#   --devices_per_process  simulated CPU devices in each process (default 4)
#   --port                 coordinator port on 127.0.0.1 (default: a free port)
#   --timeout              stop every process after this many seconds (default 0: no limit)
#   --grace                seconds between SIGTERM and SIGKILL when stopping (default 20)
#   --module               Python module to run (default mmdiff_jax.main)
#   --python               interpreter (default $PYTHON or python3)
#   ARGS                   passed to every process, e.g. the trainer's flags
#                          (the processes run in the repository's root: a relative path in
#                          ARGS is read from there, not from where the script was started)
#
# Example (the smoke config over 2 processes x 4 devices = one 8-device mesh):
#   launch/local_multiprocess.sh --num_processes=2 --devices_per_process=4 -- \
#       --config=configs/imglabel.py:smoke --workdir=/tmp/mmdiff_mp
#
# Each process gets MMDIFF_COORDINATOR, MMDIFF_NUM_PROCESSES, MMDIFF_PROCESS_ID and
# MMDIFF_LOCAL_DEVICE_COUNT (read by mmdiff_jax/training/distributed.py) and JAX_PLATFORMS=cpu.
# Output lines are prefixed with [p<i>]. The script waits for all processes; when one fails, on
# Ctrl-C / SIGTERM, or at the timeout it stops the others (SIGTERM, which the trainer treats as a
# preemption: it saves and exits; then SIGKILL after --grace) and exits non-zero (124 at the timeout).
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
}
die() {
  echo "local_multiprocess.sh: $*" >&2
  echo "Run with --help for usage." >&2
  exit 2
}
is_uint() { [[ $1 =~ ^(0|[1-9][0-9]*)$ ]]; }  # no leading zeros: bash arithmetic reads them as octal
is_positive() { is_uint "$1" && (($1 >= 1)); }

num_processes=""
devices_per_process=4
port=""
timeout_s=0
grace_s=20
module="mmdiff_jax.main"
python_bin="${PYTHON:-python3}"
seen_separator=0
while (($#)); do
  case "$1" in
    --num_processes=*) num_processes="${1#*=}" ;;
    --devices_per_process=*) devices_per_process="${1#*=}" ;;
    --port=*) port="${1#*=}" ;;
    --timeout=*) timeout_s="${1#*=}" ;;
    --grace=*) grace_s="${1#*=}" ;;
    --module=*) module="${1#*=}" ;;
    --python=*) python_bin="${1#*=}" ;;
    -h | --help) usage; exit 0 ;;
    --) shift; seen_separator=1; break ;;
    *) die "unknown flag '$1' (launcher flags use --name=value; program flags go after '--')" ;;
  esac
  shift
done

[[ -n $num_processes ]] || die "--num_processes=N is required"
is_positive "$num_processes" || die "--num_processes must be a positive integer, got '$num_processes'"
is_positive "$devices_per_process" ||
  die "--devices_per_process must be a positive integer, got '$devices_per_process'"
is_uint "$timeout_s" || die "--timeout must be a non-negative integer (seconds), got '$timeout_s'"
is_uint "$grace_s" || die "--grace must be a non-negative integer (seconds), got '$grace_s'"
[[ $module =~ ^[A-Za-z_][A-Za-z0-9_.]*$ ]] || die "--module must be a Python module name, got '$module'"
command -v "$python_bin" >/dev/null || die "--python: '$python_bin' not found"
((seen_separator)) || die "missing '--' before the program's arguments (e.g. -- --config=... --workdir=...)"
if [[ -n $port ]]; then
  if ! is_uint "$port" || ((port < 1024 || port > 65535)); then
    die "--port must be an integer in 1024..65535, got '$port'"
  fi
else
  port="$("$python_bin" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
export PYTHONPATH="$repo_root${PYTHONPATH:+:$PYTHONPATH}"

pids=()
stopping=0
stop_all() {  # stop_all SIGNAL_REASON: SIGTERM every live child, SIGKILL after the grace period.
  ((stopping)) && return 0
  stopping=1
  local pid waited=0
  echo "local_multiprocess.sh: $1; stopping all processes" >&2
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  while ((waited < grace_s * 10)); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
    waited=$((waited + 1))
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap 'stop_all "interrupted"; exit 130' INT
trap 'stop_all "terminated"; exit 143' TERM
trap 'stop_all "exiting" 2>/dev/null' EXIT

echo "local_multiprocess.sh: $num_processes process(es) x $devices_per_process CPU device(s), coordinator 127.0.0.1:$port" >&2
for ((i = 0; i < num_processes; i++)); do
  MMDIFF_COORDINATOR="127.0.0.1:$port" MMDIFF_NUM_PROCESSES="$num_processes" \
    MMDIFF_PROCESS_ID="$i" MMDIFF_LOCAL_DEVICE_COUNT="$devices_per_process" JAX_PLATFORMS=cpu \
    PYTHONUNBUFFERED=1 \
    "$python_bin" -m "$module" "$@" > >(sed -u "s/^/[p$i] /") 2>&1 &
  pids+=("$!")
done

# Wait for all; stop the rest as soon as one fails or the time is up.
start_s=$SECONDS
remaining=$num_processes
status=0
declare -A done_pids=()
while ((remaining > 0)); do
  for i in "${!pids[@]}"; do
    pid="${pids[$i]}"
    [[ -n ${done_pids[$pid]:-} ]] && continue
    kill -0 "$pid" 2>/dev/null && continue
    rc=0
    wait "$pid" || rc=$?
    done_pids[$pid]=1
    remaining=$((remaining - 1))
    if ((rc != 0)); then
      stop_all "process $i exited with status $rc"
      status=$rc
      break 2
    fi
  done
  if ((timeout_s > 0 && SECONDS - start_s >= timeout_s)); then
    stop_all "timeout after ${timeout_s}s"
    status=124
    break
  fi
  sleep 0.2
done
for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
wait 2>/dev/null || true  # the output prefixers
trap - EXIT
if ((status == 0)); then
  echo "local_multiprocess.sh: all $num_processes process(es) finished" >&2
fi
exit "$status"
