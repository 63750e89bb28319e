# Herald: the two commands a newcomer needs are `make demo` and `make test`.
# Both install what they need first (`make deps`), as root, on a fresh Debian machine:
# Debian packages, and the lab's Kubernetes control plane (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler) and helm, built once from the Go modules pinned in
# e2e/controlplane/ and e2e/helm/ into ~/.cache/herald (about 8 min on 2 cores the first time).

CARGO ?= cargo
# Debian packages the build and the tests use: clang + libbpf-dev compile the eBPF programs;
# the rest are the network tools the lab and the namespace tests drive (python3 sends raw frames).
DEB_PACKAGES := clang libbpf-dev iproute2 iputils-arping ndisc6 tcpdump iptables nftables curl procps iputils-ping skopeo umoci python3

.PHONY: dashboard all deps build test fmt-check clippy unit demo failover-bench crds manifests bench clean image

all: build

deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo ">> installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "make deps: need root to install:$$missing" >&2; exit 1; fi; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@command -v kubectl >/dev/null || { echo "make deps: kubectl (v1.32+) is required by the lab tests and the demo; install it on PATH" >&2; exit 1; }
	@command -v $(CARGO) >/dev/null || { echo "make deps: cargo (Rust 1.95+) is required" >&2; exit 1; }
	@command -v go >/dev/null || { echo "make deps: Go 1.26+ is required to build the lab's Kubernetes control plane" >&2; exit 1; }
	@bash e2e/controlplane/build.sh >/dev/null
	@bash e2e/helm/build.sh >/dev/null

build: deps
	$(CARGO) build --workspace --bins --locked

# Everything CI runs (.ci/run calls this).
test: deps fmt-check clippy unit

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

# The end-to-end tests run the workspace's binaries (herald-controller, herald-speaker,
# herald-lab) in network namespaces, so every binary is built before any test runs.
unit:
	$(CARGO) build --workspace --bins --locked
	$(CARGO) test --workspace --locked

# The user's story in a lab on this machine (as root): Herald installed with kubectl, a pool, a
# Service reached from a client, its owner's speaker Pod force-deleted, then its owner node's
# cable pulled; writes timelines of both (target/herald-demo/*.svg) and a JSON summary.
demo: build
	target/debug/herald-lab demo --json target/herald-demo/failover-summary.json

# The shipped Grafana dashboard drawn from a lab's metrics (README shows it).
dashboard: build
	target/debug/herald-lab dashboard --out config/grafana/herald-dashboard.svg

# Failover percentiles over 20 SIGKILLs (see BENCHMARKS.md).
failover-bench: build
	target/debug/herald-lab failover-bench --rounds 20 --json target/herald-demo/failover-bench.json

# Herald's OCI image (herald-controller, herald-speaker, the libraries they load; user 65534)
# as an oci-archive for skopeo, podman/docker load and ctr images import; see README.
IMAGE_TAG ?= herald:0.1.0
image: deps
	$(CARGO) build --release --locked -p herald-controller -p herald-speaker -p herald-e2e --bins
	SOURCE_DATE_EPOCH=$$(git log -1 --format=%ct 2>/dev/null || echo 0) target/release/herald-lab image \
	  --bin-dir target/release --tag $(IMAGE_TAG) --out target/image/herald-0.1.0.oci.tar \
	  --revision $$(git rev-parse HEAD 2>/dev/null || echo unknown)
	skopeo inspect oci-archive:target/image/herald-0.1.0.oci.tar >/dev/null

# Rewrite config/crd/*.yaml from the Rust types (the drift test fails until they match).
crds:
	HERALD_WRITE_CRDS=1 $(CARGO) test -p herald-config --test crds

# config/deploy is rendered from the Helm chart (config/helm/herald); edit the chart, then run this.
manifests:
	HERALD_WRITE_MANIFESTS=1 $(CARGO) test -p herald-e2e --test helm_chart config_deploy_is_what_the_chart_renders

bench:
	$(CARGO) bench --workspace

clean:
	$(CARGO) clean
