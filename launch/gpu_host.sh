#!/usr/bin/env bash
# A ReST-EM run on one host with several NVIDIA GPUs (walkthrough: launch/README.md).
#
# One process drives all local GPUs: the config's mesh (data=-1 by default) spans every GPU JAX sees, so no
# --distributed is needed. Run from the repository root:
#
#   launch/gpu_host.sh [--install] CONFIG WORKDIR [rest_jax.main flags, e.g. --config.mesh.fsdp=2]
#
#   --install   first installs rest_jax (pip install -e .) with JAX's CUDA wheels (JAX_CUDA, default cuda12) into the
#               current Python environment (PYTHON, default python3).
#
# Environment: CUDA_VISIBLE_DEVICES picks the GPUs; XLA_PYTHON_CLIENT_MEM_FRACTION (default 0.90) is the share of each
# GPU's memory JAX preallocates for its arrays (JAX's own default of 0.75 leaves a quarter idle on a dedicated host).
set -euo pipefail

usage() {
  cat >&2 <<'EOF'
usage: launch/gpu_host.sh [--install] CONFIG WORKDIR [rest_jax.main flags]
e.g.:  launch/gpu_host.sh --install configs/smollm2_arith.py runs/smollm2
EOF
  exit 2
}

PYTHON=${PYTHON:-python3}
install=false
if [[ "${1:-}" == "--install" ]]; then
  install=true
  shift
fi
if (($# < 2)) || [[ -z "$1" || -z "$2" || "$1" == -* || "$2" == -* ]]; then
  usage
fi
config=$1 workdir=$2
shift 2

if ! command -v nvidia-smi >/dev/null; then
  echo "gpu_host.sh: no NVIDIA driver on this host (nvidia-smi not found)" >&2
  exit 1
fi
nvidia-smi -L

if ${install}; then
  "${PYTHON}" -m pip install -e . "jax[${JAX_CUDA:-cuda12}]>=0.10.2,<0.11"
fi

export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.90}
gpus=$("${PYTHON}" -c 'import jax; print(len(jax.devices("gpu")))') || {
  echo "gpu_host.sh: JAX finds no GPU; install its CUDA wheels with --install (JAX_CUDA=cuda12 or cuda13)" >&2
  exit 1
}
echo "gpu_host.sh: ${gpus} GPUs, XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION}" >&2
exec "${PYTHON}" -m rest_jax.main --config="${config}" --workdir="${workdir}" "$@"
