#!/usr/bin/env bash
# setup-envtest.sh: build kube-apiserver, kube-scheduler and
# kube-controller-manager once from Debian's `kubernetes` source package
# (v1.20.2) and cache them, for the operator's envtest-style integration
# tests (apiserver only) and the local cluster of tests/e2e (all three).
# Prints the KUBEBUILDER_ASSETS folder (the one holding the binaries and a
# link to Debian's etcd) as its last line of stdout. The apiserver takes a few
# minutes on two cores; the other two reuse its Go cache (about a minute
# each).
#
# Idempotent: when the cached binaries exist the script only prints the path;
# when only one is missing, only that one is built (the source is fetched
# again if its work folder is gone).
# The build's sources and Go caches are removed afterwards (keep them with
# HETERMOE_ENVTEST_KEEP_WORK=1).
# Needs root (or the packages already installed) for apt-get; the only
# network it uses is the Debian archive.
#
#   export KUBEBUILDER_ASSETS=$(tests/operator/setup-envtest.sh)
#
# The recipe (why each step):
#  - a private apt sources list with a deb-src line for bookworm, so the
#    system's sources stay untouched;
#  - `apt-get source --download-only kubernetes`: the v1.20.2 tree with
#    vendor/ (34 MB);
#  - vendored github.com/modern-go/reflect2 v1.0.1 breaks on Go >= 1.18:
#    replaced by Debian's golang-github-modern-go-reflect2-dev sources;
#  - GOPATH mode (GO111MODULE=off, tree linked at $GOPATH/src/k8s.io/kubernetes)
#    with Go 1.19, build tag providerless;
#  - pkg/generated/openapi is generated first with the vendored openapi-gen
#    over the packages tagged +k8s:openapi-gen= (as the upstream Makefile does).
set -euo pipefail

CACHE="${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/hetermoe/envtest"
BIN="$CACHE/bin"
VERSION=v1.20.2

log() { echo "setup-envtest: $*" >&2; }

COMPONENTS=(kube-apiserver kube-scheduler kube-controller-manager)
missing=()
for c in "${COMPONENTS[@]}"; do
  [[ -x "$BIN/$c" ]] || missing+=("$c")
done
if ((${#missing[@]} == 0)) && [[ -x "$BIN/etcd" ]]; then
  echo "$BIN"
  exit 0
fi

need_pkgs=()
for p in golang-1.19-go etcd-server golang-github-modern-go-reflect2-dev dpkg-dev; do
  dpkg -s "$p" >/dev/null 2>&1 || need_pkgs+=("$p")
done
if ((${#need_pkgs[@]})); then
  log "installing ${need_pkgs[*]}"
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >&2
fi

GO=/usr/lib/go-1.19/bin/go
[[ -x $GO ]] || { log "missing $GO (apt package golang-1.19-go)"; exit 1; }
ETCD=$(command -v etcd || true)
[[ -n $ETCD ]] || { log "missing etcd (apt package etcd-server)"; exit 1; }

WORK="$CACHE/work"
mkdir -p "$WORK" "$BIN"

# 1. The source package, through a private apt configuration.
SRC_DIR="$WORK/src"
if [[ ! -d "$SRC_DIR/kubernetes" ]]; then
  APT="$WORK/apt"
  mkdir -p "$APT/lists/partial" "$APT/archives/partial" "$SRC_DIR"
  echo "deb-src http://deb.debian.org/debian bookworm main" > "$APT/sources.list"
  APT_OPTS=(-o "Dir::Etc::SourceList=$APT/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
            -o "Dir::State::Lists=$APT/lists" -o "Dir::Cache::Archives=$APT/archives"
            -o "APT::Sandbox::User=root")
  log "fetching the kubernetes source package"
  apt-get "${APT_OPTS[@]}" update -qq >&2
  (cd "$SRC_DIR" && apt-get "${APT_OPTS[@]}" source --download-only kubernetes >&2)
  dsc=$(ls "$SRC_DIR"/kubernetes_*.dsc | head -1)
  (cd "$SRC_DIR" && dpkg-source --no-check -x "$dsc" kubernetes.tmp >&2 && mv kubernetes.tmp kubernetes)
fi
TREE="$SRC_DIR/kubernetes"

# 2. reflect2 from Debian (works with Go >= 1.18).
R2=/usr/share/gocode/src/github.com/modern-go/reflect2
if [[ ! -f "$TREE/vendor/github.com/modern-go/reflect2/.from-debian" ]]; then
  rm -rf "$TREE/vendor/github.com/modern-go/reflect2"
  mkdir -p "$TREE/vendor/github.com/modern-go/reflect2"
  cp -r "$R2"/. "$TREE/vendor/github.com/modern-go/reflect2/"
  find "$TREE/vendor/github.com/modern-go/reflect2" -name '*_test.go' -delete
  touch "$TREE/vendor/github.com/modern-go/reflect2/.from-debian"
fi

# 3. GOPATH mode.
export GOPATH="$WORK/gopath" GO111MODULE=off GOFLAGS="" CGO_ENABLED=1
export GOCACHE="$WORK/gocache"
mkdir -p "$GOPATH/src/k8s.io"
ln -sfn "$TREE" "$GOPATH/src/k8s.io/kubernetes"
PKG_ROOT="$GOPATH/src/k8s.io/kubernetes"

# 4. pkg/generated/openapi.
OPENAPI_OUT="$TREE/pkg/generated/openapi/zz_generated.openapi.go"
if [[ ! -s "$OPENAPI_OUT" ]]; then
  log "generating pkg/generated/openapi"
  (cd "$PKG_ROOT" && $GO build -o "$WORK/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen) >&2
  # Directories whose Go files carry the tag, as Go package paths (the
  # vendored ones keep their vendor/ prefix; openapi-gen strips it on output).
  dirs=$(cd "$PKG_ROOT" && find -L . \( -path ./_output -o -path ./.git -o -path ./debian -o -path ./_gopath \
             -o -path ./.pc -o -path ./staging \) -prune -o -name '*.go' -print0 \
         | { xargs -0 grep -l --color=never '+k8s:openapi-gen=' || true; } \
         | xargs -n1 dirname | LC_ALL=C sort -u | sed 's|^\./|k8s.io/kubernetes/|' | paste -sd, -)
  mkdir -p "$TREE/pkg/generated/openapi"
  (cd "$PKG_ROOT" && "$WORK/openapi-gen" --logtostderr \
      -i "$dirs" \
      -p k8s.io/kubernetes/pkg/generated/openapi -O zz_generated.openapi \
      -h "$PKG_ROOT/hack/boilerplate/boilerplate.generatego.txt" \
      -r "$WORK/openapi-violations.report" ) >&2
  [[ -s "$OPENAPI_OUT" ]] || { log "openapi-gen produced nothing"; exit 1; }
fi

# 5. The missing binaries, all with the same flags and tags.
VPKG=k8s.io/kubernetes/vendor/k8s.io/component-base/version
LDFLAGS="-s -w -X $VPKG.gitVersion=$VERSION -X $VPKG.gitMajor=1 -X $VPKG.gitMinor=20 -X $VPKG.gitTreeState=clean"
for c in "${missing[@]}"; do
  log "building $c $VERSION (a few minutes)"
  (cd "$PKG_ROOT" && $GO build -tags providerless -ldflags "$LDFLAGS" -o "$BIN/$c.tmp" "./cmd/$c") >&2
  mv "$BIN/$c.tmp" "$BIN/$c"
  log "$c: $("$BIN/$c" --version 2>&1)"
done
ln -sfn "$ETCD" "$BIN/etcd"
# The sources and Go caches (~1 GB) are not needed any more.
if [[ -z "${HETERMOE_ENVTEST_KEEP_WORK:-}" ]]; then
  chmod -R u+w "$WORK" 2>/dev/null || true
  rm -rf "$WORK"
fi
echo "$BIN"
