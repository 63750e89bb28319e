# Sourced by e2e/controlplane/build.sh and e2e/helm/build.sh: the one place that decides where
# a pinned build is cached and answers for it when it is already there.
#   use_cache MODE NAME WHAT   MODE: build or --locate; NAME: the cache folder's name;
#                              WHAT: how to name the build in messages.
# Sets $out (the folder) and $bin (its bin/). When the build is complete it prints $bin and
# exits 0; with --locate and no complete build it exits 3; otherwise it returns and the caller
# builds, then writes "$out/complete".
use_cache() {
	local mode="$1" name="$2" what="$3"
	local root="${HERALD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/herald}"
	out="$root/$name"
	bin="$out/bin"
	if [ -f "$out/complete" ]; then
		echo "$what: cached in $out" >&2
		echo "$bin"
		exit 0
	fi
	if [ "$mode" = "--locate" ]; then
		echo "$what is not built yet: run \`make deps\`" >&2
		exit 3
	fi
	mkdir -p "$bin"
}
