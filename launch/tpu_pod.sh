#!/usr/bin/env bash
# A ReST-EM run on a Cloud TPU VM pod slice, step by step (walkthrough: launch/README.md).
#
# Every worker of the slice runs the same `python -m rest_jax.main ... --distributed`: JAX's distributed runtime
# finds the other workers and the coordinator itself on TPU VMs, and the mesh spans the chips of all workers. The
# workdir must be one directory shared by all workers; `install ... BUCKET` mounts gs://BUCKET at /gcs/BUCKET on every
# worker for that (gcsfuse), so a workdir under /gcs/BUCKET/ works.
#
#   launch/tpu_pod.sh create  NAME ZONE ACCELERATOR_TYPE RUNTIME_VERSION [gcloud create flags, e.g. --spot]
#   launch/tpu_pod.sh install NAME ZONE REPO_URL [GIT_REF [BUCKET]]
#   launch/tpu_pod.sh run     NAME ZONE CONFIG WORKDIR [rest_jax.main flags, e.g. --config.rest.num_iterations=2]
#   launch/tpu_pod.sh fetch   NAME ZONE WORKDIR LOCAL_DIR
#   launch/tpu_pod.sh delete  NAME ZONE
#
# The gcloud project is gcloud's default (`gcloud config set project ...`, or CLOUDSDK_CORE_PROJECT). Extra flags
# for every `tpu-vm ssh` and `scp` (e.g. --tunnel-through-iap) go in TPU_SSH_FLAGS.
set -euo pipefail

readonly REMOTE_REPO='~/rest_jax'
readonly REMOTE_VENV='~/rest_jax_venv'
readonly JAX_SPEC='jax[tpu]>=0.10.2,<0.11'  # The JAX release setup.py pins, with the TPU runtime (libtpu).

usage() {
  cat >&2 <<'EOF'
usage: launch/tpu_pod.sh create  NAME ZONE ACCELERATOR_TYPE RUNTIME_VERSION [gcloud create flags]
       launch/tpu_pod.sh install NAME ZONE REPO_URL [GIT_REF [BUCKET]]
       launch/tpu_pod.sh run     NAME ZONE CONFIG WORKDIR [rest_jax.main flags]
       launch/tpu_pod.sh fetch   NAME ZONE WORKDIR LOCAL_DIR
       launch/tpu_pod.sh delete  NAME ZONE
e.g.:  launch/tpu_pod.sh create rest-pod us-central2-b v4-16 tpu-ubuntu2204-base
EOF
  exit 2
}

# need MIN_ARGS "$@": the subcommand's required arguments are there and none of them is empty.
need() {
  local min=$1
  shift
  if (($# < min)); then
    echo "tpu_pod.sh ${COMMAND}: expected at least ${min} arguments, got $#" >&2
    usage
  fi
  local i
  for ((i = 1; i <= min; i++)); do
    if [[ -z "${!i}" ]]; then
      echo "tpu_pod.sh ${COMMAND}: argument ${i} is empty" >&2
      usage
    fi
  done
}

# on_all_workers NAME ZONE SCRIPT: runs SCRIPT (bash) on every worker of the slice at the same time.
on_all_workers() {
  gcloud compute tpus tpu-vm ssh "$1" --zone="$2" --worker=all "${SSH_FLAGS[@]}" --command="$3"
}

read -r -a SSH_FLAGS <<<"${TPU_SSH_FLAGS:-}"

(($# >= 1)) || usage
COMMAND=$1
shift

case "${COMMAND}" in
  create)
    need 4 "$@"
    name=$1 zone=$2 accelerator=$3 runtime=$4
    shift 4
    gcloud compute tpus tpu-vm create "${name}" --zone="${zone}" --accelerator-type="${accelerator}" \
      --version="${runtime}" "$@"
    ;;

  install)
    need 3 "$@"
    name=$1 zone=$2 repo=$3 ref=${4:-} bucket=${5:-}
    if [[ -n "${bucket}" && ! "${bucket}" =~ ^[a-z0-9][a-z0-9._-]*$ ]]; then
      echo "tpu_pod.sh install: BUCKET is a bucket name such as my-runs (no gs://), got '${bucket}'" >&2
      usage
    fi
    # Python >= 3.11 (setup.py) from uv: TPU VM images ship an older system Python.
    script="set -euo pipefail
command -v uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh
export PATH=\$HOME/.local/bin:\$PATH
[ -d ${REMOTE_REPO}/.git ] || git clone $(printf '%q' "${repo}") ${REMOTE_REPO}
cd ${REMOTE_REPO}
git fetch --quiet origin"
    if [[ -n "${ref}" ]]; then  # A branch (its latest commit on origin), a tag or a commit.
      ref_q=$(printf '%q' "${ref}")
      script+="
git checkout --quiet --detach \$(git rev-parse --verify --quiet origin/${ref_q} || git rev-parse --verify ${ref_q})"
    fi
    script+="
[ -x ${REMOTE_VENV}/bin/python ] || uv venv --python 3.11 ${REMOTE_VENV}
uv pip install --python ${REMOTE_VENV}/bin/python -e . $(printf '%q' "${JAX_SPEC}")
${REMOTE_VENV}/bin/python -c 'import jax, rest_jax; print(\"rest_jax installed with jax\", jax.__version__)'"
    if [[ -n "${bucket}" ]]; then
      # --rename-dir-limit: Orbax finishes a checkpoint by renaming its directory, which gcsfuse refuses by default.
      script+="
if ! command -v gcsfuse >/dev/null; then
  key=/usr/share/keyrings/cloud.google.asc
  curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee \$key >/dev/null
  echo \"deb [signed-by=\$key] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -cs) main\" \\
    | sudo tee /etc/apt/sources.list.d/gcsfuse.list
  sudo apt-get update -q && sudo apt-get install -y -q gcsfuse
fi
sudo mkdir -p /gcs/${bucket} && sudo chown \$(id -u):\$(id -g) /gcs/${bucket}
mountpoint -q /gcs/${bucket} || gcsfuse --implicit-dirs --rename-dir-limit=1000000 ${bucket} /gcs/${bucket}"
    fi
    on_all_workers "${name}" "${zone}" "${script}"
    ;;

  run)
    need 4 "$@"
    name=$1 zone=$2 config=$3 workdir=$4
    shift 4
    flags=""
    if (($# > 0)); then
      flags=" $(printf '%q ' "$@")"
    fi
    # No coordinator flags: on TPU VMs jax.distributed.initialize() reads the slice's workers from the metadata.
    script="set -euo pipefail
cd ${REMOTE_REPO}
REST_JAX_PROGRESS=0 ${REMOTE_VENV}/bin/python -m rest_jax.main --config=$(printf '%q' "${config}") \
--workdir=$(printf '%q' "${workdir}") --distributed${flags}"
    on_all_workers "${name}" "${zone}" "${script}"
    ;;

  fetch)
    need 4 "$@"
    name=$1 zone=$2 workdir=$3 local_dir=$4
    mkdir -p "${local_dir}"
    if [[ "${workdir}" =~ ^/gcs/([^/]+)/(.+)$ ]]; then  # A gcsfuse mount: read the bucket directly.
      gcloud storage rsync --recursive "gs://${BASH_REMATCH[1]}/${BASH_REMATCH[2]%/}" "${local_dir}"
    else  # Another shared file system: copy it from worker 0.
      gcloud compute tpus tpu-vm scp --recurse --zone="${zone}" --worker=0 "${SSH_FLAGS[@]}" "${name}:${workdir%/}" \
        "${local_dir}"
    fi
    ;;

  delete)
    need 2 "$@"
    gcloud compute tpus tpu-vm delete "$1" --zone="$2" --quiet
    ;;

  *)
    echo "tpu_pod.sh: unknown command '${COMMAND}'" >&2
    usage
    ;;
esac
