#!/usr/bin/env bash
# The GPU benchmarks as one command, for a GPU machine lent for a short time (BENCHMARKS.md, "On a GPU
# machine"). In order, each under its own time limit and all of them under TOTAL_S (default 480 s: about
# 8 minutes on an H200, leaving room in a 15-minute lease for the machine's start and a rerun of a step):
#   train_step  the default config (configs/imglabel.py, no variant) in bf16: step time, model FLOP/s and
#               their fraction of the bf16 matmul peak (an 8192^3 jnp.dot timed in alternation);
#   vs_pytorch  the same U-Net and train step (image-only default config) in PyTorch on the same GPU, eager
#               (contiguous and channels_last) and torch.compile, bf16 autocast, alternating with the JAX
#               steps (bf16 activations);
#   sampling    DDIM-50 images/s at batch 256: JAX's compiled loop, the PyTorch twin eager and compiled;
#   max_batch   the largest batch of the default config (float32) whose train step fits, remat off / on.
# Every step writes its JSON into $OUT (if set; else benchmarks/results/) as gpu_<step>*.json, and the
# whole output goes to gpu_all.log beside them; a step that fails or runs out of time is reported and the
# next one runs; a summary (each step's status and its tables) comes at the end.
#
#   bash benchmarks/gpu_all.sh             # on the GPU machine: stops at once if JAX sees no GPU
#   bash benchmarks/gpu_all.sh --smoke     # (also --dry-run or SMOKE=1) every step on the CPU: the smoke
#                                          # config, tiny sizes, torch.compile's aot_eager backend, XLA's
#                                          # backend optimisation off; figures meaningless, JSON into
#                                          # $OUT or /tmp/mmdiff_gpu_all_smoke (never benchmarks/results/)
#   STEPS="vs_pytorch max_batch" bash benchmarks/gpu_all.sh   # a rerun of some steps only
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
export PYTHONUNBUFFERED=1
if [ "$SMOKE" = 1 ]; then
  OUT_DIR="${OUT:-/tmp/mmdiff_gpu_all_smoke}"
  PREFIX=smoke_gpu_
  TOTAL_S="${TOTAL_S:-900}"
  export JAX_PLATFORMS=cpu
  # Compile faster (XLA's CPU backend without LLVM optimisation): the smoke run checks that every step
  # runs, its figures mean nothing.
  export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_backend_optimization_level=0"
else
  OUT_DIR="${OUT:-benchmarks/results}"
  PREFIX=gpu_
  TOTAL_S="${TOTAL_S:-480}"
fi
mkdir -p "$OUT_DIR" || exit 2
LOG="$OUT_DIR/${PREFIX}all.log"
: > "$LOG"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
START=$(date +%s)
say() { echo "$@" | tee -a "$LOG"; }

say "== gpu_all.sh $([ "$SMOKE" = 1 ] && echo '(smoke, on the CPU)') $(date -u '+%Y-%m-%d %H:%M UTC'); JSON and log into $OUT_DIR; budget ${TOTAL_S} s; steps: $STEPS"

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
say "\$ $PY -c 'import jax; print(jax.devices())'"
"$PY" -c 'import jax; print(jax.devices())' 2>&1 | tee -a "$LOG"
FLAGS="$TMP/flags"
"$PY" - "$FLAGS" <<'EOF' 2>&1 | tee -a "$LOG"
import platform
import sys
import jax, flax
jax_gpu = jax.default_backend() == "gpu"
print(f"python {platform.python_version()}, jax {jax.__version__}, flax {flax.__version__}, "
      f"default backend {jax.default_backend()}")
torch_cuda = False
try:
  import torch
  torch_cuda = torch.cuda.is_available()
  print(f"torch {torch.__version__}: cuda available {torch_cuda}"
        + (f" ({torch.cuda.get_device_name()})" if torch_cuda else ""))
except ImportError as e:
  print(f"torch: cannot be imported ({e})")
from benchmarks import offline
print(f"data packages stood in for (benchmarks/offline.py): {offline.STOOD_IN or 'none'}")
with open(sys.argv[1], "w") as f:
  f.write(f"JAX_GPU={int(jax_gpu)}\nTORCH_CUDA={int(torch_cuda)}\n")
EOF
JAX_GPU=0 TORCH_CUDA=0
[ -f "$FLAGS" ] && . "$FLAGS"
if [ "$SMOKE" != 1 ] && [ "$JAX_GPU" != 1 ]; then
  say "gpu_all.sh: JAX sees no GPU (jax.default_backend() is not 'gpu'): these are GPU benchmarks; stopping."
  say "  (install a CUDA jaxlib, e.g. jax[cuda12/13], or run 'bash benchmarks/gpu_all.sh --smoke' for the CPU check)"
  exit 3
fi

# --- One step: its command under min(its limit, what is left of TOTAL_S); status into the summary. ----
declare -a SUMMARY=()
left() { echo $(( TOTAL_S - ($(date +%s) - START) )); }
run_step() {  # run_step NAME LIMIT_S JSON COMMAND...
  local name="$1" limit="$2" json="$3"; shift 3
  local t; t=$(left); [ "$t" -gt "$limit" ] && t="$limit"
  if [ "$t" -lt 20 ]; then
    SUMMARY+=("| $name | skipped: ${t} s left of TOTAL_S=${TOTAL_S} | 0 | - |"); say "== $name: skipped (no time left)"
    return
  fi
  say ""
  say "== $name (limit ${t} s): $*"
  local s0; s0=$(date +%s)
  rm -f "$json"  # a file in the summary is this run's
  timeout -k 10 "$t" "$@" 2>&1 | tee -a "$LOG" "$TMP/$name.log"
  local rc=${PIPESTATUS[0]} status
  case "$rc" in
    0) status=ok ;;
    124|137) status="TIMED OUT after ${t} s (JSON holds what was written before)" ;;
    *) status="FAILED (exit $rc): $(grep -v '^\s*$' "$TMP/$name.log" | tail -n 1 | cut -c1-160)" ;;
  esac
  SUMMARY+=("| $name | $status | $(( $(date +%s) - s0 )) | $( [ -f "$json" ] && echo "$json" || echo none ) |")
}
want() { case " $STEPS " in *" $1 "*) return 0 ;; esac; return 1; }

# --- The steps. --------------------------------------------------------------------------------------
if [ "$SMOKE" = 1 ]; then
  CFG=smoke DEV=cpu COMPILE_BACKEND=aot_eager
  TS_ARGS="--configs=smoke --matmul_n=256 --rounds=1 --reps=1 --matmul_reps=1"
  VP_ARGS="--config=smoke --rounds=1 --reps=1 --no_single_thread"
  SA_ARGS="--config=smoke --ddim_steps=5 --batch_sizes=4 --rounds=1"
  MB_ARGS="--config=smoke --remat=true --start=4 --multiple=4 --limit_gib=0.05 --max_probes=1"  # remat off: train_step's program
  L_TS=300 L_VP=400 L_SA=200 L_MB=300
else
  CFG=default DEV=cuda COMPILE_BACKEND=inductor
  TS_ARGS="--configs=default --matmul_n=8192 --rounds=7 --reps=20 --matmul_reps=10"
  VP_ARGS="--config=default --rounds=5 --reps=10"
  SA_ARGS="--config=default --ddim_steps=50 --batch_sizes=256 --rounds=3"
  MB_ARGS="--config=default --start=512 --multiple=8"
  L_TS=110 L_VP=170 L_SA=110 L_MB=200
fi

if want train_step; then
  J="$OUT_DIR/${PREFIX}train_step_bf16.json"
  run_step train_step "$L_TS" "$J" "$PY" -m benchmarks.train_step $TS_ARGS --dtype=bfloat16 --multitask=none \
      --json="$J"
fi

# PyTorch shares the GPU with JAX in these two: JAX allocates as it goes instead of taking 75% up front.
if want vs_pytorch; then
  J="$OUT_DIR/${PREFIX}vs_pytorch_bf16.json"
  if [ "$DEV" = cuda ] && [ "$TORCH_CUDA" != 1 ]; then
    SUMMARY+=("| vs_pytorch | skipped: torch sees no CUDA device | 0 | - |"); say "== vs_pytorch: skipped (torch sees no CUDA)"
  else
    run_step vs_pytorch "$L_VP" "$J" env XLA_PYTHON_CLIENT_PREALLOCATE=false \
        "$PY" -m benchmarks.vs_pytorch $VP_ARGS --device=$DEV --dtype=bfloat16 --autocast_bf16 --torch_compile \
        --torch_compile_backend=$COMPILE_BACKEND --json="$J"
  fi
fi

if want sampling; then
  J="$OUT_DIR/${PREFIX}sampling_ddim50.json"
  TORCH_FLAGS="--torch --torch_compile --torch_compile_backend=$COMPILE_BACKEND --autocast_bf16 --device=$DEV"
  if [ "$DEV" = cuda ] && [ "$TORCH_CUDA" != 1 ]; then
    TORCH_FLAGS=""; say "== sampling: torch sees no CUDA device, JAX only"
  fi
  run_step sampling "$L_SA" "$J" env XLA_PYTHON_CLIENT_PREALLOCATE=false \
      "$PY" -m benchmarks.sampling $SA_ARGS --image_only --dtype=bfloat16 --samplers=ddim --no_python_loop \
      $TORCH_FLAGS --json="$J"
fi

# The largest batch: JAX may take 90% of the card (its default pool is 75%); each remat setting gets half
# of the time left (less a margin), and the JSON is rewritten after every probe.
if want max_batch; then
  J="$OUT_DIR/${PREFIX}max_batch.json"
  t=$(left); [ "$t" -gt "$L_MB" ] && t="$L_MB"
  budget=$(( (t - 30) / 2 )); [ "$budget" -lt 10 ] && budget=10
  run_step max_batch "$L_MB" "$J" env XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 \
      "$PY" -m benchmarks.max_batch $MB_ARGS --budget_s=$budget --json="$J"
fi

# --- The summary. ------------------------------------------------------------------------------------
{
  echo ""
  echo "== Summary ($([ "$SMOKE" = 1 ] && echo 'smoke, CPU: figures meaningless' || echo GPU)): $(( $(date +%s) - START )) s in all"
  echo ""
  echo "| step | status | seconds | JSON |"
  echo "|---|---|---|---|"
  for row in "${SUMMARY[@]}"; do echo "$row"; done
  for name in train_step vs_pytorch sampling max_batch; do
    [ -f "$TMP/$name.log" ] || continue
    echo ""
    echo "-- $name: its tables"
    awk '/^### /{on=1; n++} on && !/^(### |\||$)/{on=0} on; END{if (!n) print "(none printed)"}' "$TMP/$name.log"
  done
} | tee -a "$LOG"
