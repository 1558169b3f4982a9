#!/usr/bin/env bash
# The GPU benchmarks as one command, for a GPU machine lent for a short time (BENCHMARKS.md, "On a GPU
# machine"). In order, each under its own time limit:
#   train_step  the default config (configs/imglabel.py, no variant) in bf16: step time, model FLOP/s and
#               their fraction of the bf16 matmul peak (an 8192^3 jnp.dot timed in alternation);
#   vs_pytorch  the same U-Net and train step (image-only default config) in PyTorch on the same GPU, eager
#               (contiguous and channels_last) and torch.compile, bf16 autocast, alternating with the
#               library's JAX step (bf16 activations);
#   sampling    DDIM-50 images/s at batch 256: JAX's compiled loop alone, then the PyTorch twin eager,
#               then compiled, each alternating with it;
#   max_batch   the largest batch of the default config (float32) whose train step fits, remat off, then
#               on starting from remat off's result: decided by XLA's memory analysis, the largest fit
#               of each setting checked by a real step.
# Time: each step has a share (S_* below: about what it needs on an H100, where a compile of the default
# step took 52 s) and the start-up one of PRE_S; TOTAL_S defaults to their sum over the steps run (530 s
# for all four, under the 560 s a lease's run allows). A step may run until the shares up to and
# including its own have passed (its share plus whatever earlier steps left unused), the last one until
# TOTAL_S; a step with under 20 s is skipped.
# Every step writes its JSON into $OUT (if set; else benchmarks/results/) as gpu_<step>*.json, rewritten
# as each part is measured ("complete": true once all of it ran), so a step that runs out of time leaves
# what it measured; the whole output goes to gpu_all.log beside them; a step that fails or runs out of
# time is reported and the next one runs; a summary (each step's status and its tables) ends the output.
#
#   MMDIFF_BENCH_COMMIT=<hash> bash benchmarks/gpu_all.sh   # the GPU machine: stops at once if JAX sees
#                                          # no GPU; the hash names the commit in the JSON files (a copy
#                                          # without .git cannot; unset: git's, else "unknown")
#   bash benchmarks/gpu_all.sh --smoke     # (also --dry-run or SMOKE=1) every step on the CPU: the smoke
#                                          # config, tiny sizes, torch.compile's aot_eager backend, XLA's
#                                          # backend optimisation off; figures meaningless, JSON into
#                                          # $OUT or /tmp/mmdiff_gpu_all_smoke (never benchmarks/results/)
#   STEPS="vs_pytorch max_batch" bash benchmarks/gpu_all.sh   # a rerun of some steps only (TOTAL_S:
#                                          # theirs; S_VP=240 or TOTAL_S=... to change it)
#
# Nothing is installed from the network. Where ml_collections is missing (the GPU image has none), the
# wheel in benchmarks/wheels/ goes on PYTHONPATH (a pure-Python wheel imports as a zip); the data-loading
# packages the image lacks (grain, tensorflow_datasets, array_record) are stood in for by
# benchmarks/offline.py (the benchmarks never read a dataset). Run from anywhere: it cd's to the repository.
set -u

usage() { sed -n '2,/^[^#]/p' "$0" | sed '$d; s/^# \{0,1\}//'; }  # the header comment
SMOKE="${SMOKE:-0}"
for arg in "$@"; do
  case "$arg" in
    --smoke|--dry-run) SMOKE=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_all.sh: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.." || exit 2
PY="${PYTHON:-python3}"
STEPS="${STEPS:-train_step vs_pytorch sampling max_batch}"
ORDER="train_step vs_pytorch sampling max_batch"
export PYTHONUNBUFFERED=1
want() { case " $STEPS " in *" $1 "*) return 0 ;; esac; return 1; }
if [ "$SMOKE" = 1 ]; then
  OUT_DIR="${OUT:-/tmp/mmdiff_gpu_all_smoke}"
  PREFIX=smoke_gpu_
  # The 2-core CPU compiles slowly: generous shares (a quiet smoke run takes about 2 minutes).
  PRE_S="${PRE_S:-60}" S_TS="${S_TS:-200}" S_VP="${S_VP:-280}" S_SA="${S_SA:-160}" S_MB="${S_MB:-200}"
  export JAX_PLATFORMS=cpu
  # Compile faster (XLA's CPU backend without LLVM optimisation): the smoke run checks that every step
  # runs, its figures mean nothing.
  export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_backend_optimization_level=0"
else
  OUT_DIR="${OUT:-benchmarks/results}"
  PREFIX=gpu_
  # Estimates for one H100 (a process's start ~15 s; a compile of the default train step ~50 s):
  #   train_step  the compile, FLOPs from a CPU lowering, the state, 7 rounds of 20 steps: ~85 s;
  #   vs_pytorch  the library step's compile, torch eager (two layouts), Inductor's compile of the U-Net's
  #               forward and backward (~60-100 s), two alternations: ~175 s;
  #   sampling    JAX's DDIM loop (compile ~25 s): ~50 s; + eager ~65 s; + Inductor's forward ~110 s (the
  #               compiled twin where earlier steps left time: it is not one of the goals);
  #   max_batch   a compile per remat setting (~55 s each) and a verifying run of each: ~150 s.
  PRE_S="${PRE_S:-20}" S_TS="${S_TS:-100}" S_VP="${S_VP:-180}" S_SA="${S_SA:-90}" S_MB="${S_MB:-140}"
fi
SHARES=$PRE_S LAST=""
for step in $ORDER; do
  want "$step" || continue
  LAST=$step
  case "$step" in
    train_step) SHARES=$(( SHARES + S_TS )) ;;
    vs_pytorch) SHARES=$(( SHARES + S_VP )) ;;
    sampling) SHARES=$(( SHARES + S_SA )) ;;
    max_batch) SHARES=$(( SHARES + S_MB )) ;;
  esac
done
TOTAL_S="${TOTAL_S:-$SHARES}"
mkdir -p "$OUT_DIR" || exit 2
LOG="$OUT_DIR/${PREFIX}all.log"
: > "$LOG"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
START=$(date +%s)
say() { echo "$@" | tee -a "$LOG"; }

# The commit the JSON files name: common.machine() reads the same variable, else asks git.
if [ -n "${MMDIFF_BENCH_COMMIT:-}" ]; then
  COMMIT="$MMDIFF_BENCH_COMMIT"
else
  COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo 'unknown (no .git here: pass MMDIFF_BENCH_COMMIT=<hash>)')"
fi
say "== gpu_all.sh $([ "$SMOKE" = 1 ] && echo '(smoke, on the CPU)') $(date -u '+%Y-%m-%d %H:%M UTC'); commit $COMMIT"
say "   JSON and log into $OUT_DIR; steps: $STEPS; budget ${TOTAL_S} s (start-up $PRE_S; shares: train_step $S_TS, vs_pytorch $S_VP, sampling $S_SA, max_batch $S_MB)"

# --- The environment: JAX's devices, torch's CUDA, the packages the benchmarks need. -----------------
if ! "$PY" -c "import ml_collections" 2>/dev/null; then
  wheel="$(ls benchmarks/wheels/ml_collections-*.whl 2>/dev/null | head -n 1)"
  if [ -n "$wheel" ]; then
    export PYTHONPATH="$PWD/$wheel${PYTHONPATH:+:$PYTHONPATH}"
    say "ml_collections: not installed; using $wheel"
  fi
  if ! "$PY" -c "import ml_collections" 2>/dev/null; then
    say "gpu_all.sh: ml_collections cannot be imported and benchmarks/wheels/ has no wheel of it; stopping."
    exit 2
  fi
fi
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,memory.total,driver_version \
    --format=csv,noheader 2>&1 | sed 's/^/nvidia-smi: /' | tee -a "$LOG"
# One process starts JAX's GPU client, then torch's, and writes what it found as it goes: JAX_GPU first,
# so that a torch whose CUDA libraries fail to load is reported as such, not as a missing GPU.
FLAGS="$TMP/flags"
"$PY" - "$FLAGS" <<'EOF' 2>&1 | tee -a "$LOG"
import platform
import sys

import flax
import jax

with open(sys.argv[1], "w") as f:
  f.write(f"JAX_GPU={int(jax.default_backend() == 'gpu')}\n")
print(f"python {platform.python_version()}, jax {jax.__version__}, flax {flax.__version__}, "
      f"default backend {jax.default_backend()}; jax.devices(): {jax.devices()}")
torch_cuda = False
try:
  import torch
  torch_cuda = torch.cuda.is_available()
  print(f"torch {torch.__version__}: cuda available {torch_cuda}"
        + (f" ({torch.cuda.get_device_name()})" if torch_cuda else ""))
except Exception as e:  # ImportError, or OSError / RuntimeError from its CUDA libraries
  torch_cuda = False
  print(f"torch: cannot be used ({type(e).__name__}: {e})")
with open(sys.argv[1], "a") as f:
  f.write(f"TORCH_CUDA={int(torch_cuda)}\n")
from benchmarks import offline
print(f"data packages stood in for (benchmarks/offline.py): {offline.STOOD_IN or 'none'}")
EOF
JAX_GPU="" TORCH_CUDA=0
[ -f "$FLAGS" ] && . "$FLAGS"
if [ -z "$JAX_GPU" ]; then
  say "gpu_all.sh: the environment check failed before JAX answered (its error is above); stopping."
  exit 3
fi
if [ "$SMOKE" != 1 ] && [ "$JAX_GPU" != 1 ]; then
  say "gpu_all.sh: JAX sees no GPU (jax.default_backend() is not 'gpu'): these are GPU benchmarks; stopping."
  say "  (install a CUDA jaxlib, e.g. jax[cuda12/13], or run 'bash benchmarks/gpu_all.sh --smoke' for the CPU check)"
  exit 3
fi

# --- One step: its limit (begin_step), its command under it (run_step), its status into the summary. --
declare -a SUMMARY=() RERUN=()
DUE=$PRE_S
begin_step() {  # begin_step NAME SHARE: T = seconds until the shares so far have passed, capped by TOTAL_S
  DUE=$(( DUE + $2 ))
  local now=$(( $(date +%s) - START ))
  T=$(( DUE - now ))
  if [ "$1" = "$LAST" ] || [ "$T" -gt $(( TOTAL_S - now )) ]; then T=$(( TOTAL_S - now )); fi
}
run_step() {  # run_step NAME JSON COMMAND... (under T seconds)
  local name="$1" json="$2"; shift 2
  if [ "$T" -lt 20 ]; then
    SUMMARY+=("| $name | skipped: ${T} s left | 0 | - |"); say "== $name: skipped (${T} s left)"
    RERUN+=("$name")
    return
  fi
  say ""
  say "== $name (limit ${T} s): $*"
  local s0; s0=$(date +%s)
  rm -f "$json"  # a file in the summary is this run's
  timeout -k 10 "$T" "$@" 2>&1 | tee -a "$LOG" "$TMP/$name.log"
  local rc=${PIPESTATUS[0]} status
  case "$rc" in
    0) status=ok ;;
    124|137) status="TIMED OUT after ${T} s (its JSON holds what it measured before: see its \"complete\")" ;;
    *) status="FAILED (exit $rc): $(grep -v '^\s*$' "$TMP/$name.log" | tail -n 1 | cut -c1-160)" ;;
  esac
  [ "$rc" = 0 ] || RERUN+=("$name")
  SUMMARY+=("| $name | $status | $(( $(date +%s) - s0 )) | $( [ -f "$json" ] && echo "$json" || echo none ) |")
}

# --- The steps. --------------------------------------------------------------------------------------
if [ "$SMOKE" = 1 ]; then
  DEV=cpu COMPILE_BACKEND=aot_eager
  TS_ARGS="--configs=smoke --matmul_n=256 --rounds=1 --reps=1 --matmul_reps=1"
  VP_ARGS="--config=smoke --rounds=1 --reps=1 --no_single_thread"
  SA_ARGS="--config=smoke --ddim_steps=5 --batch_sizes=4 --rounds=1"
  # A simulated 0.05 GiB device: remat off fits 4 and is predicted to fit more, so the second probe and
  # remat on's start (from remat off's result) take the same paths as on the GPU.
  MB_ARGS="--config=smoke --start=4 --multiple=4 --limit_gib=0.05 --max_probes=2"
else
  DEV=cuda COMPILE_BACKEND=inductor
  TS_ARGS="--configs=default --matmul_n=8192 --rounds=7 --reps=20 --matmul_reps=10"
  VP_ARGS="--config=default --rounds=5 --reps=10"
  SA_ARGS="--config=default --ddim_steps=50 --batch_sizes=256 --rounds=3"
  MB_ARGS="--config=default --start=512 --multiple=8"
fi

if want train_step; then
  J="$OUT_DIR/${PREFIX}train_step_bf16.json"
  begin_step train_step "$S_TS"
  run_step train_step "$J" "$PY" -m benchmarks.train_step $TS_ARGS --dtype=bfloat16 --multitask=none \
      --json="$J"
fi

# PyTorch shares the GPU with JAX in these two: JAX allocates as it goes instead of taking 75% up front.
# jax_bare (a second ~50 s compile) is left out: the torch.compile phase needs the time.
if want vs_pytorch; then
  J="$OUT_DIR/${PREFIX}vs_pytorch_bf16.json"
  begin_step vs_pytorch "$S_VP"
  if [ "$DEV" = cuda ] && [ "$TORCH_CUDA" != 1 ]; then
    SUMMARY+=("| vs_pytorch | skipped: torch sees no CUDA device | 0 | - |"); say "== vs_pytorch: skipped (torch sees no CUDA)"
  else
    run_step vs_pytorch "$J" env XLA_PYTHON_CLIENT_PREALLOCATE=false \
        "$PY" -m benchmarks.vs_pytorch $VP_ARGS --device=$DEV --dtype=bfloat16 --autocast_bf16 --torch_compile \
        --torch_compile_backend=$COMPILE_BACKEND --no_jax_bare --json="$J"
  fi
fi

if want sampling; then
  J="$OUT_DIR/${PREFIX}sampling_ddim50.json"
  begin_step sampling "$S_SA"
  TORCH_FLAGS="--torch --torch_compile --torch_compile_backend=$COMPILE_BACKEND --autocast_bf16 --device=$DEV"
  if [ "$DEV" = cuda ] && [ "$TORCH_CUDA" != 1 ]; then
    TORCH_FLAGS=""; say "== sampling: torch sees no CUDA device, JAX only"
  fi
  run_step sampling "$J" env XLA_PYTHON_CLIENT_PREALLOCATE=false \
      "$PY" -m benchmarks.sampling $SA_ARGS --image_only --dtype=bfloat16 --samplers=ddim --no_python_loop \
      $TORCH_FLAGS --json="$J"
fi

# The largest batch: JAX may take 90% of the card (its default pool is 75%). The deadline leaves a few
# seconds of the limit for the tables and the last JSON.
if want max_batch; then
  J="$OUT_DIR/${PREFIX}max_batch.json"
  begin_step max_batch "$S_MB"
  run_step max_batch "$J" env XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 \
      "$PY" -m benchmarks.max_batch $MB_ARGS --remat=false,true --decide=memory \
      --deadline_unix=$(( $(date +%s) + T - 5 )) --json="$J"
fi

# --- The summary. ------------------------------------------------------------------------------------
{
  echo ""
  echo "== Summary ($([ "$SMOKE" = 1 ] && echo 'smoke, CPU: figures meaningless' || echo GPU)): $(( $(date +%s) - START )) s in all"
  echo ""
  echo "| step | status | seconds | JSON |"
  echo "|---|---|---|---|"
  for row in "${SUMMARY[@]}"; do echo "$row"; done
  if [ "${#RERUN[@]}" -gt 0 ]; then
    echo ""
    echo "A rerun of those that did not finish: ${MMDIFF_BENCH_COMMIT:+MMDIFF_BENCH_COMMIT=$MMDIFF_BENCH_COMMIT }STEPS=\"${RERUN[*]}\" bash benchmarks/gpu_all.sh$([ "$SMOKE" = 1 ] && echo ' --smoke')"
  fi
  for name in $ORDER; do
    [ -f "$TMP/$name.log" ] || continue
    echo ""
    echo "-- $name: its tables"
    awk '/^### /{on=1; n++} on && !/^(### |\||$)/{on=0} on; END{if (!n) print "(none printed)"}' "$TMP/$name.log"
  done
} | tee -a "$LOG"
