#!/usr/bin/env bash
# Trains on a Cloud TPU VM pod slice: one process per TPU host, all started by gcloud over ssh
# (--worker=all). JAX finds the other hosts itself (jax.distributed.initialize() on a TPU VM).
#
# Usage:
#   launch/tpu_pod.sh COMMAND --tpu=NAME --zone=ZONE [--project=PROJECT] [flags] [-- TRAINER_FLAGS]
#
# Commands:
#   create   create the TPU VM slice (needs --accelerator_type)
#   setup    copy this checkout to every host, make a venv there with Python >= 3.11 (installed from
#            Ubuntu's packages where the image has an older python3) holding jax[tpu], the package and
#            gcsfs, and the TFDS data dir (--data_dir: copied from gs://; else Fashion-MNIST prepared
#            offline)
#   train    run python -m mmdiff_jax.main on every host (needs --workdir=gs://...). Rerunning the same
#            command resumes from the newest checkpoint in the workdir.
#   stop     stop a --detach'ed training run on every host
#   delete   delete the TPU VM slice
#   all      create, setup, train
#
# Flags:
#   --tpu=NAME                TPU VM name (required)
#   --zone=ZONE               e.g. us-central2-b (required)
#   --project=PROJECT         default: gcloud's configured project
#   --accelerator_type=TYPE   create: e.g. v4-32, v5p-16, v5litepod-16, v6e-16
#   --version=RUNTIME         create: TPU software version (default: the one for the accelerator type:
#                             v2-alpha-tpuv5 for v5p, v2-alpha-tpuv5-lite for v5litepod,
#                             v2-alpha-tpuv6e for v6e, tpu-ubuntu2204-base for v2-v4)
#   --spot                    create: a spot (preemptible) slice; the trainer saves on SIGTERM and
#                             `train` resumes after re-creation
#   --config=PATH[:VARIANT]   train: experiment config (default configs/imglabel.py)
#   --workdir=gs://BUCKET/DIR train: checkpoints, metrics and samples, shared by all hosts (required)
#   --data_dir=gs://BUCKET/D  setup: a prepared TFDS data dir (array_record) copied to every host's
#                             ~/tensorflow_datasets; without it, every host installs Debian/Ubuntu's
#                             dataset-fashion-mnist and prepares fashion_mnist_offline locally
#   --remote_dir=DIR          where the code goes on the hosts (default mmdiff_jax, under $HOME)
#   --detach                  train: run in the background (log: ~/mmdiff_train.log on each host)
#   --dry_run                 print the gcloud commands instead of running them
#   TRAINER_FLAGS             passed to the trainer, e.g. --config.training.batch_size=512
#
# Example (a v4-32 slice: 4 hosts x 4 chips):
#   launch/tpu_pod.sh all --tpu=mmdiff --zone=us-central2-b --accelerator_type=v4-32 \
#       --workdir=gs://my-bucket/mmdiff/imglabel -- --config.mesh.fsdp=4 --config.fsdp=True
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() {
  echo "tpu_pod.sh: $*" >&2
  echo "Run with --help for usage." >&2
  exit 2
}

command_name=""
tpu=""
zone=""
project=""
accelerator_type=""
version=""
spot=0
config="configs/imglabel.py"
workdir=""
data_dir=""
remote_dir="mmdiff_jax"
detach=0
dry_run=0
trainer_flags=()
while (($#)); do
  case "$1" in
    create | setup | train | stop | delete | all)
      [[ -z $command_name ]] || die "two commands given: '$command_name' and '$1'"
      command_name="$1" ;;
    --tpu=*) tpu="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --accelerator_type=*) accelerator_type="${1#*=}" ;;
    --version=*) version="${1#*=}" ;;
    --spot) spot=1 ;;
    --config=*) config="${1#*=}" ;;
    --workdir=*) workdir="${1#*=}" ;;
    --data_dir=*) data_dir="${1#*=}" ;;
    --remote_dir=*) remote_dir="${1#*=}" ;;
    --detach) detach=1 ;;
    --dry_run) dry_run=1 ;;
    -h | --help) usage; exit 0 ;;
    --) shift; trainer_flags=("$@"); break ;;
    *) die "unknown argument '$1' (trainer flags go after '--')" ;;
  esac
  shift
done

[[ -n $command_name ]] || die "a command is required: create, setup, train, stop, delete or all"
[[ -n $tpu ]] || die "--tpu=NAME is required"
[[ $tpu =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]] ||
  die "--tpu must be lower-case letters, digits and '-', starting with a letter; got '$tpu'"
[[ -n $zone ]] || die "--zone=ZONE is required (e.g. us-central2-b)"
[[ $zone =~ ^[a-z]+-[a-z]+[0-9]+-[a-z]$ ]] || die "--zone does not look like a zone (e.g. us-central2-b): '$zone'"
if [[ -n $project && ! $project =~ ^[a-z][-a-z0-9.:]{4,61}[a-z0-9]$ ]]; then
  die "--project does not look like a project id: '$project'"
fi
case "$command_name" in
  create | all)
    [[ -n $accelerator_type ]] || die "$command_name: --accelerator_type is required (e.g. v4-32)"
    [[ $accelerator_type =~ ^v[0-9]+[a-z]*(pod)?-[0-9]+$ ]] ||
      die "--accelerator_type does not look like a TPU type (e.g. v4-32, v5litepod-16): '$accelerator_type'" ;;
esac
case "$command_name" in
  train | all)
    [[ -n $workdir ]] || die "$command_name: --workdir=gs://BUCKET/DIR is required"
    [[ $workdir =~ ^gs://[a-z0-9][-a-z0-9_.]{1,220}[a-z0-9](/.*)?$ ]] ||
      die "--workdir must be a gs:// path that every host can reach, got '$workdir'"
    [[ $config =~ ^[^:]+(:[A-Za-z0-9_=,.-]*)?$ ]] || die "--config must be PATH[:VARIANT], got '$config'"
    repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    [[ -f "$repo_root/${config%%:*}" ]] || die "--config: no file '${config%%:*}' in $repo_root" ;;
esac
if [[ -n $data_dir && ! $data_dir =~ ^gs://[a-z0-9][-a-z0-9_.]{1,220}[a-z0-9](/.*)?$ ]]; then
  die "--data_dir must be a gs:// path to a prepared TFDS data dir, got '$data_dir'"
fi
[[ $remote_dir =~ ^[A-Za-z0-9_.][A-Za-z0-9_./-]*$ ]] ||
  die "--remote_dir must be a relative path under \$HOME (letters, digits, _ . - /), got '$remote_dir'"
if ((!dry_run)); then
  command -v gcloud >/dev/null || die "gcloud not found: install the Google Cloud CLI and run 'gcloud auth login'"
fi

gcloud_tpu=(gcloud compute tpus tpu-vm)
where=(--zone="$zone")
[[ -z $project ]] || where+=(--project="$project")

run() {  # Prints the command; runs it unless --dry_run.
  printf '+' >&2
  printf ' %q' "$@" >&2
  printf '\n' >&2
  ((dry_run)) || "$@"
}
on_all_hosts() {  # on_all_hosts SCRIPT: runs a bash script on every host of the slice.
  run "${gcloud_tpu[@]}" ssh "$tpu" "${where[@]}" --worker=all --command="$1"
}

default_version() {  # the TPU software version Google documents for each accelerator generation
  case "$1" in
    v5p-*) echo v2-alpha-tpuv5 ;;
    v5litepod-* | v5e-*) echo v2-alpha-tpuv5-lite ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) echo tpu-ubuntu2204-base ;;
  esac
}

do_create() {
  [[ -n $version ]] || version="$(default_version "$accelerator_type")"
  local extra=()
  ((spot)) && extra+=(--spot)
  run "${gcloud_tpu[@]}" create "$tpu" "${where[@]}" --accelerator-type="$accelerator_type" \
    --version="$version" "${extra[@]}"
}

do_setup() {
  local root archive
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  # The checkout as it is (tracked and untracked files that git does not ignore).
  if ((dry_run)); then
    archive="/tmp/mmdiff_jax.tar.gz"
    echo "+ (cd $root && git ls-files -co --exclude-standard | tar czf $archive -T -)" >&2
  else
    archive="$(mktemp --suffix=.tar.gz)"
    (cd "$root" && git ls-files -z -co --exclude-standard | tar czf "$archive" --null -T -)
  fi
  run "${gcloud_tpu[@]}" scp "$archive" "$tpu:mmdiff_jax.tar.gz" "${where[@]}" --worker=all
  ((dry_run)) || rm -f "$archive"
  local data_step
  if [[ -n $data_dir ]]; then
    data_step="gcloud storage rsync --recursive $(printf '%q' "$data_dir") ~/tensorflow_datasets"
  else
    data_step="sudo apt-get install -y -qq dataset-fashion-mnist && python3 -c 'from mmdiff_jax.data import sources; sources.prepare_fashion_mnist()'"
  fi
  on_all_hosts "set -euo pipefail
    sudo apt-get update -qq
    # The package needs Python >= 3.11; the TPU images' python3 is Ubuntu 22.04's 3.10.
    new_enough() { \"\$1\" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }
    py=''
    for candidate in python3 python3.13 python3.12 python3.11; do
      if new_enough \$candidate; then py=\$candidate; break; fi
    done
    if [[ -z \$py ]]; then sudo apt-get install -y -qq python3.11; py=python3.11; fi
    sudo apt-get install -y -qq \$py-venv 2>/dev/null || sudo apt-get install -y -qq python3-venv
    mkdir -p ~/$remote_dir && tar xzf ~/mmdiff_jax.tar.gz -C ~/$remote_dir
    # A venv left by an earlier setup with an older Python is made again.
    if [[ -d ~/mmdiff_venv ]] && ! new_enough ~/mmdiff_venv/bin/python; then rm -rf ~/mmdiff_venv; fi
    [[ -d ~/mmdiff_venv ]] || \$py -m venv ~/mmdiff_venv
    source ~/mmdiff_venv/bin/activate
    pip install -q -U pip
    pip install -q -e ~/$remote_dir 'jax[tpu]' gcsfs
    mkdir -p ~/tensorflow_datasets && cd ~/$remote_dir
    $data_step
    python3 -c 'import jax; print(jax.device_count(), \"devices,\", jax.local_device_count(), \"local\")'"
}

do_train() {
  local flags
  flags="$(printf ' %q' "--config=$config" "--workdir=$workdir" "${trainer_flags[@]}")"
  local launch="MMDIFF_DISTRIBUTED=cluster TFDS_DATA_DIR=\$HOME/tensorflow_datasets python3 -m mmdiff_jax.main$flags"
  if ((detach)); then
    on_all_hosts "set -euo pipefail; cd ~/$remote_dir && source ~/mmdiff_venv/bin/activate
      nohup env $launch > ~/mmdiff_train.log 2>&1 < /dev/null &
      echo \$! > ~/mmdiff_train.pid; echo \"\$(hostname): started pid \$(cat ~/mmdiff_train.pid), log ~/mmdiff_train.log\""
  else
    on_all_hosts "set -euo pipefail; cd ~/$remote_dir && source ~/mmdiff_venv/bin/activate && env $launch"
  fi
}

do_stop() {
  # SIGTERM: the trainer saves a checkpoint and exits; rerun `train` to resume.
  on_all_hosts "if [[ -f ~/mmdiff_train.pid ]]; then kill -TERM \$(cat ~/mmdiff_train.pid) 2>/dev/null && echo \"\$(hostname): stopping\"; rm -f ~/mmdiff_train.pid; fi"
}

do_delete() {
  run "${gcloud_tpu[@]}" delete "$tpu" "${where[@]}" --quiet
}

case "$command_name" in
  create) do_create ;;
  setup) do_setup ;;
  train) do_train ;;
  stop) do_stop ;;
  delete) do_delete ;;
  all) do_create; do_setup; do_train ;;
esac
