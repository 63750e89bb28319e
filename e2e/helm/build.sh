#!/usr/bin/env bash
# Builds helm from the Go module pinned in this folder (helm.sh/helm/v4, as a `tool` of go.mod),
# once per pin, into a cache outside the clone:
#   ${HERALD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/herald}/helm-<version>-<hash>/bin/helm
# Prints that bin directory on the last line of stdout; build output goes to stderr.
#   build.sh            build if needed, print the bin directory
#   build.sh --locate   print the bin directory if it is built, else fail (exit 3) without building
# Re-pin with: (cd e2e/helm && go get -tool helm.sh/helm/v4/cmd/helm@VERSION && go mod tidy)
set -euo pipefail
mode="${1:-build}"
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=../cache.sh
. "$here/../cache.sh"

version="$(sed -n 's/^[[:space:]]*helm\.sh\/helm\/v4 \(v[^ ]*\).*/\1/p' "$here/go.mod" | head -n1)"
[ -n "$version" ] || { echo "build.sh: cannot read the pinned helm version from $here/go.mod" >&2; exit 1; }
hash="$(cat "$here/go.mod" "$here/go.sum" | sha256sum | cut -c1-12)"
use_cache "$mode" "helm-$version-$hash" "helm $version"

command -v go >/dev/null || { echo "build.sh: Go (1.26+) is required to build helm" >&2; exit 1; }
started=$(date +%s)
echo ">> building helm $version from its Go module (first time only)" >&2
# helm version prints what the release's own build stamps.
ldflags="-s -w -X helm.sh/helm/v4/internal/version.version=$version"
if ! (cd "$here" && CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false" GOTOOLCHAIN=local \
	go build -p "$(nproc)" -trimpath -ldflags "$ldflags" -o "$bin/helm" helm.sh/helm/v4/cmd/helm) 2>"$out/build.log"; then
	echo "build.sh: building helm failed; the end of $out/build.log:" >&2
	tail -n 40 "$out/build.log" >&2
	exit 1
fi
echo "helm=$version built_seconds=$(( $(date +%s) - started ))" > "$out/complete"
echo ">> helm built in $(( $(date +%s) - started )) s into $out" >&2
echo "$bin"
