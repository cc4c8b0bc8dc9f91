#!/usr/bin/env bash
# Run rotax on every host of a Cloud TPU slice (one process per host, all hosts at once).
#
#   scripts/launch_tpu.sh sync                      # copy this checkout to every host, install
#   scripts/launch_tpu.sh run ROTAX_ARGS...         # e.g. run sft --config configs/qwen2_5_7b.py \
#                                                   #        --config.model.path="$MODEL_DIR"
#   scripts/launch_tpu.sh exec 'SHELL COMMAND'      # any command on every host (checks, cleanup)
#
# Required environment:
#   TPU_NAME            the TPU VM / slice name (gcloud compute tpus tpu-vm list)
#   TPU_ZONE            its zone, e.g. us-east5-a
# Optional:
#   TPU_PROJECT         gcloud project (default: gcloud's configured project)
#   ROTAX_REMOTE_DIR    rotax checkout on each host, relative to the remote home or absolute
#                       (default: rotax)
#   ROTAX_REMOTE_VENV   virtualenv on each host; relative = inside ROTAX_REMOTE_DIR (default: .venv)
#   ROTAX_REMOTE_LOGS   per-host logs; relative = inside ROTAX_REMOTE_DIR (default: logs)
#   ROTAX_EXTRA_ENV     extra "NAME=value ..." exported before rotax runs (e.g. XLA/LIBTPU flags)
#
# `run` sets ROTAX_DISTRIBUTED=1, so rotax calls jax.distributed.initialize() on each host and
# JAX finds the slice's coordinator and process ids itself (TPU metadata). Every host must see
# the model directory (--config.model.path) and the run directory (--config.run_dir) at the
# same path: use a shared filesystem (Filestore/NFS, or a GCS bucket mounted with gcsfuse);
# checkpoints written to a host-local disk cannot be restored.
set -euo pipefail

usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
[[ $# -ge 1 ]] || usage
mode="$1"; shift
[[ "$mode" == "-h" || "$mode" == "--help" ]] && usage 0

: "${TPU_NAME:?set TPU_NAME to the TPU VM name}"
: "${TPU_ZONE:?set TPU_ZONE to the TPU zone}"
remote_dir="${ROTAX_REMOTE_DIR:-rotax}"
remote_venv="${ROTAX_REMOTE_VENV:-.venv}"
remote_logs="${ROTAX_REMOTE_LOGS:-logs}"
gcloud_flags=(--zone "$TPU_ZONE")
[[ -n "${TPU_PROJECT:-}" ]] && gcloud_flags+=(--project "$TPU_PROJECT")

on_all_hosts() {  # run one shell command string on every worker of the slice
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${gcloud_flags[@]}" --worker=all --command="$1"
}

quote_args() {  # the arguments as one shell-safe string
  local out="" arg
  for arg in "$@"; do out+=" $(printf '%q' "$arg")"; done
  printf '%s' "${out# }"
}

case "$mode" in
  sync)
    repo_root="$(cd "$(dirname "$0")/.." && pwd)"
    archive_dir="$(mktemp -d)"
    archive="$archive_dir/rotax-src.tar.gz"
    trap 'rm -rf "$archive_dir"' EXIT
    # the committed tree only: uncommitted edits do not reach the hosts
    git -C "$repo_root" archive --format=tar.gz -o "$archive" HEAD
    gcloud compute tpus tpu-vm scp "$archive" "$TPU_NAME:rotax-src.tar.gz" \
      "${gcloud_flags[@]}" --worker=all
    on_all_hosts "set -e
      mkdir -p $(printf '%q' "$remote_dir") && tar -xzf rotax-src.tar.gz -C $(printf '%q' "$remote_dir") && rm rotax-src.tar.gz
      cd $(printf '%q' "$remote_dir")
      [ -d $(printf '%q' "$remote_venv") ] || python3 -m venv $(printf '%q' "$remote_venv")
      . $(printf '%q' "$remote_venv")/bin/activate
      pip install -q --upgrade pip
      pip install -q -c constraints.txt -e . 'jax[tpu]'
      python -c 'import jax; print(jax.process_index(), jax.local_device_count(), jax.devices()[0].device_kind)'"
    ;;
  run)
    [[ $# -ge 1 ]] || { echo "run: give the rotax arguments, e.g. run sft --config ..." >&2; exit 2; }
    rotax_args="$(quote_args "$@")"
    on_all_hosts "set -o pipefail
      cd $(printf '%q' "$remote_dir") && . $(printf '%q' "$remote_venv")/bin/activate
      mkdir -p $(printf '%q' "$remote_logs")
      export ROTAX_DISTRIBUTED=1 ${ROTAX_EXTRA_ENV:-}
      rotax $rotax_args 2>&1 | tee $(printf '%q' "$remote_logs")/\$(hostname).log"
    ;;
  exec)
    [[ $# -eq 1 ]] || { echo "exec: give one quoted shell command" >&2; exit 2; }
    on_all_hosts "$1"
    ;;
  *)
    echo "unknown mode '$mode' (sync, run, exec)" >&2
    usage
    ;;
esac
