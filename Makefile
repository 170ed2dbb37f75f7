# picluster: `make images` builds one SD card image per node in cluster.yaml; `make test` runs
# every test. Both install what they need first (a Python venv and Debian packages).

PYTHON     ?= python3
CLUSTER    ?= cluster.yaml
VENV       := .venv
BIN        := $(VENV)/bin
PICLUSTER  := $(BIN)/picluster
IMAGES     ?= images
SETUP_LOG  := setup.log
PYTHON_SOURCES := builder tests bench overlays overlays/common/usr/sbin/picluster-agent
# Debian packages building needs on the build machine (make images): mmdebstrap and qemu-user
# for the arm base (gpg and libdpkg-perl, which it would otherwise recommend: keyrings, package
# versions), kmod (the base's module index is made natively), openssl (the base's certificate
# links), the filesystem tools that write images without mounting them, compressors; golang-go
# and umoci (flannel's image: flanneld built for arm64, laid out as OCI), skopeo (the container
# images a card carries with images: card); openssh-client (verify, upgrade and backup reach the
# nodes over SSH).
BUILD_PACKAGES := python3-venv mmdebstrap qemu-user-static arch-test gpg libdpkg-perl kmod openssl \
	ca-certificates dosfstools mtools e2fsprogs fdisk eatmydata zstd xz-utils golang-go umoci skopeo \
	openssh-client
# What the tests add (make test): bmap-tools (the block map checked against bmaptool's reading),
# gnupg and dpkg-dev (a signed stand-in apt repository), xfsprogs (a filesystem with reflink
# copies), qemu-system-arm (booting a card in QEMU); for the flannel lab, which runs the real
# flanneld v0.10.0 in network namespaces: gcc (flanneld's amd64 build uses cgo),
# containernetworking-plugins (the cards' bridge, host-local, portmap), iptables (flanneld runs
# it), iputils-ping (pods ping across nodes); keepalived and haproxy (they serve a virtual IP in
# tests/integration/test_virtual_ip.py); etcd-server and etcd-client (a real etcd cluster that
# `picluster replace` removes a member from, tests/integration/test_replace.py); docker-registry
# and containerd (a real registry serving images made in tests/integration/test_container_images.py,
# and a real containerd of the test's own importing them); faketime (the clock moved eleven months
# on for tests/integration/test_agent_certs.py).
TEST_PACKAGES := bmap-tools gnupg dpkg-dev xfsprogs qemu-system-arm gcc containernetworking-plugins iptables \
	iputils-ping etcd-server etcd-client keepalived haproxy docker-registry containerd faketime
# The upstream source archives from a copy of shared/ beside the clone, when there is one
# (builder/upstream.py), instead of downloading them.
export PICLUSTER_UPSTREAM ?= $(if $(wildcard ../shared/upstream),$(abspath ../shared/upstream))

.PHONY: images render validate verify test test-fast lint setup test-setup host-packages test-packages clean

images: setup
	$(PICLUSTER) build -f $(CLUSTER) -o $(IMAGES)

render: setup
	$(PICLUSTER) render -f $(CLUSTER) -o out

validate: setup
	$(PICLUSTER) validate -f $(CLUSTER)

# After flashing and booting: check every node over SSH (picluster verify --help for options).
verify: setup
	$(PICLUSTER) verify -f $(CLUSTER)

# Every tier: unit, integration (root) and e2e (QEMU). A tier that cannot run fails the run
# (tests/support/tiers.py) unless left out by name: PICLUSTER_SKIP=e2e make test. pytest's exit status 5
# means it found no tests at all, which must never pass as success.
test: test-setup lint
	@$(BIN)/pytest; status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests; failing" >&2; fi; \
	exit $$status

test-fast: test-setup
	$(BIN)/pytest tests/unit

lint: setup
	$(BIN)/ruff check $(PYTHON_SOURCES)
	$(BIN)/ruff format --check $(PYTHON_SOURCES)
	$(BIN)/mypy

setup: host-packages $(VENV)/.installed
test-setup: test-packages $(VENV)/.installed

host-packages:
	@$(call install_packages,$(BUILD_PACKAGES),building)
test-packages: host-packages
	@$(call install_packages,$(TEST_PACKAGES),the tests)

# Install the Debian packages of $(1) not installed yet, without their recommends; apt's own
# output goes to SETUP_LOG, the terminal gets a line with the time taken, and the log's last
# lines when it fails.
define install_packages
missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
if [ -n "$$missing" ]; then \
	start=$$(date +%s); \
	echo "==> Debian packages for $(2): installing $$(echo $$missing | wc -w) (apt's output in $(SETUP_LOG))"; \
	SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	if ! { $$SUDO apt-get update && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; } >$(SETUP_LOG).step 2>&1; then \
		cat $(SETUP_LOG).step >>$(SETUP_LOG); echo "make: installing Debian packages failed; apt said:" >&2; \
		tail -n 20 $(SETUP_LOG).step >&2; rm -f $(SETUP_LOG).step; exit 1; \
	fi; \
	cat $(SETUP_LOG).step >>$(SETUP_LOG); rm -f $(SETUP_LOG).step; \
	echo "    [$$(( $$(date +%s) - start ))s] installed:" $$missing; \
fi
endef

$(VENV)/.installed: pyproject.toml
	@start=$$(date +%s); \
	echo "==> Python environment: picluster and its packages into $(VENV) (pip's output in $(SETUP_LOG))"; \
	if ! { $(PYTHON) -m venv $(VENV) && $(BIN)/pip install --upgrade pip && $(BIN)/pip install -e '.[dev]'; } >$(SETUP_LOG).step 2>&1; then \
		cat $(SETUP_LOG).step >>$(SETUP_LOG); echo "make: setting up $(VENV) failed; its last words:" >&2; \
		tail -n 20 $(SETUP_LOG).step >&2; rm -f $(SETUP_LOG).step; exit 1; \
	fi; \
	cat $(SETUP_LOG).step >>$(SETUP_LOG); rm -f $(SETUP_LOG).step; \
	touch $@; \
	echo "    [$$(( $$(date +%s) - start ))s] $(VENV) ready"

clean:
	rm -rf out $(IMAGES) .pytest_cache .mypy_cache .ruff_cache $(SETUP_LOG)
