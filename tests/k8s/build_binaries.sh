#!/usr/bin/env bash
# Build (or reuse) the Kubernetes control-plane binaries the tests in tests/k8s run against:
# kube-apiserver, kube-controller-manager and kube-scheduler from Debian's `kubernetes` source
# package (1.20.x, vendored Go dependencies, so the build needs no network beyond the Debian
# archive), and etcd from Debian's `etcd-server` binary package, unpacked rather than installed so
# no system service is set up.
#
# Usage: tests/k8s/build_binaries.sh            prints the bin folder on its last line
# Env:   K8S_CACHE_DIR  where sources, toolchain caches and binaries live (default: .cache/k8s)
#
# The system's apt configuration is not touched: the deb-src entry lives in a sources list of our
# own, and its package lists in a state folder of our own. The one system change is installing
# Debian's Go toolchain (golang-go) when `go` is missing, because the build needs it.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
cache="${K8S_CACHE_DIR:-$root/.cache/k8s}"
bin="$cache/bin"
# The exact source version: bookworm's security update, which builds with bookworm's Go 1.19.
version="1.20.5+really1.20.2-1.1+deb12u1"
components=(kube-apiserver kube-controller-manager kube-scheduler)

have_all() {
  local name
  for name in "${components[@]}" etcd; do
    [ -x "$bin/$name" ] || return 1
  done
  "$bin/kube-apiserver" --version >/dev/null 2>&1 && "$bin/etcd" --version >/dev/null 2>&1
}

if have_all; then
  echo "k8s binaries: reusing $bin ($("$bin/kube-apiserver" --version))" >&2
  echo "$bin"
  exit 0
fi

mkdir -p "$bin" "$cache/apt/lists/partial" "$cache/apt/archives/partial" "$cache/apt/parts"
cat >"$cache/apt/sources.list" <<'EOF'
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
EOF
apt_opts=(
  -o "Dir::Etc::sourcelist=$cache/apt/sources.list"
  -o "Dir::Etc::sourceparts=$cache/apt/parts"
  -o "Dir::State::Lists=$cache/apt/lists"
  -o "Dir::Cache::archives=$cache/apt/archives"
  -o "APT::Sandbox::User=root"
)
echo "k8s binaries: updating the private package lists" >&2
apt-get "${apt_opts[@]}" update -qq

if [ ! -x "$bin/etcd" ]; then
  echo "k8s binaries: unpacking etcd from etcd-server" >&2
  work="$(mktemp -d)"
  (cd "$work" && apt-get "${apt_opts[@]}" download -qq etcd-server)
  dpkg-deb -x "$work"/etcd-server_*.deb "$work/root"
  install -m 0755 "$work/root/usr/bin/etcd" "$bin/etcd"
  rm -rf "$work"
fi

missing=()
for name in "${components[@]}"; do
  [ -x "$bin/$name" ] || missing+=("$name")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if ! command -v go >/dev/null 2>&1; then
    echo "k8s binaries: installing Debian's Go toolchain (golang-go)" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go >/dev/null
  fi
  src="$cache/src"
  if [ ! -f "$src/kubernetes/Makefile" ]; then
    echo "k8s binaries: fetching the kubernetes $version source package" >&2
    rm -rf "$src"
    mkdir -p "$src"
    (cd "$src" && apt-get "${apt_opts[@]}" source --download-only -qq "kubernetes=$version")
    (cd "$src" && dpkg-source -x ./*.dsc kubernetes >/dev/null)
  fi
  what=""
  for name in "${missing[@]}"; do
    what="$what cmd/$name"
  done
  echo "k8s binaries: building${what} (several minutes)" >&2
  started=$SECONDS
  # GOPATH mode with the vendor folder (the 1.20 build scripts set that up); GOPROXY=off proves
  # nothing is downloaded. nice: the build shares the machine's CPUs.
  (
    cd "$src/kubernetes"
    export GOCACHE="$cache/go-build" GOPATH="$cache/gopath" GOPROXY=off GOFLAGS= CGO_ENABLED=0
    export HOME="$cache/home"
    mkdir -p "$HOME"
    nice -n 10 make WHAT="${what# }" >&2
  )
  for name in "${missing[@]}"; do
    install -m 0755 "$src/kubernetes/_output/bin/$name" "$bin/$name"
  done
  echo "k8s binaries: built in $((SECONDS - started)) s" >&2
  # The build tree and Go's cache are several GB and only the binaries are needed again.
  rm -rf "$src" "$cache/go-build" "$cache/gopath"
fi

have_all
echo "k8s binaries: ready in $bin ($("$bin/kube-apiserver" --version))" >&2
echo "$bin"
