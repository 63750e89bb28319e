#!/usr/bin/env bash
# Builds the lab's control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler)
# from the Go modules pinned in this folder, once per pin, into a cache outside the clone:
#   ${HERALD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/herald}/controlplane-<kubernetes>-<etcd>-<hash>/bin
# Prints that bin directory on the last line of stdout. A second clone on the same machine with the
# same pin builds nothing. Build output and timings go to stderr.
#   build.sh            build if needed, print the bin directory
#   build.sh --locate   print the bin directory if it is built, else fail (exit 3) without building
set -euo pipefail
mode="${1:-build}"
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=../cache.sh
. "$here/../cache.sh"

version_of() { (cd "$here/$1" && GOFLAGS=-mod=mod go list -m -f '{{.Version}}' "$2"); }
k8s="$(version_of kubernetes k8s.io/kubernetes)"
etcd="$(version_of etcd go.etcd.io/etcd/server/v3)"
[ -n "$k8s" ] && [ -n "$etcd" ] || { echo "build.sh: cannot read the pinned versions from $here/*/go.mod" >&2; exit 1; }
hash="$(cat "$here"/kubernetes/go.mod "$here"/kubernetes/go.sum "$here"/etcd/go.mod "$here"/etcd/go.sum | sha256sum | cut -c1-12)"
use_cache "$mode" "controlplane-$k8s-$etcd-$hash" "the lab's control plane ($k8s, etcd $etcd)"

command -v go >/dev/null || { echo "build.sh: Go (1.26+) is required to build the lab's control plane" >&2; exit 1; }
minor="${k8s#v1.}"; minor="${minor%%.*}"
commit="$(go mod download -json "k8s.io/kubernetes@$k8s" | sed -n 's/^[[:space:]]*"Sum": "\(.*\)",$/\1/p')"
# The version stamp kubectl version and /version show; without it the server says v0.0.0-master.
ldflags="-s -w \
 -X k8s.io/component-base/version.gitVersion=$k8s \
 -X k8s.io/component-base/version.gitMajor=1 \
 -X k8s.io/component-base/version.gitMinor=$minor \
 -X k8s.io/component-base/version.gitTreeState=clean \
 -X 'k8s.io/component-base/version.gitCommit=module $commit' \
 -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z"
# One package compile per core keeps peak memory near 2 GiB a core.
jobs="$(nproc)"
export CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false" GOTOOLCHAIN=local

# go build -v names each package it compiles: count them as progress, keep the full log.
go_build() { # module-dir output ldflags package
	local log="$out/build-$(basename "$2").log"
	if ! (cd "$here/$1" && go build -v -p "$jobs" -trimpath -ldflags "$3" -o "$2" "$4") 2>"$log"; then
		echo "build.sh: building $4 failed; the end of $log:" >&2
		tail -n 40 "$log" >&2
		exit 1
	fi
}
progress() { # log
	local n=0
	while [ ! -f "$out/.done" ]; do
		sleep 15
		n=$(cat "$out"/build-*.log 2>/dev/null | wc -l)
		echo "   ... $n packages compiled so far" >&2
	done
}

started=$(date +%s)
rm -f "$out/.done"
progress &
progress_pid=$!
trap 'touch "$out/.done"; wait "$progress_pid" 2>/dev/null || true' EXIT
t=$started
echo ">> building etcd $etcd (first time only)" >&2
go_build etcd "$bin/etcd" "-s -w" go.etcd.io/etcd/server/v3
echo ">> etcd built in $(( $(date +%s) - t )) s" >&2
for cmd in kube-apiserver kube-controller-manager kube-scheduler; do
	t=$(date +%s)
	echo ">> building $cmd $k8s (first time only; kube-apiserver is the slow one)" >&2
	go_build kubernetes "$bin/$cmd" "$ldflags" "k8s.io/kubernetes/cmd/$cmd"
	echo ">> $cmd built in $(( $(date +%s) - t )) s" >&2
done
echo "kubernetes=$k8s etcd=$etcd built_seconds=$(( $(date +%s) - started ))" > "$out/complete"
echo ">> control plane built in $(( $(date +%s) - started )) s into $out" >&2
echo "$bin"
