# flanneld (Rust) — see README.md. `make demo` and `make test` do all their own set-up.
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: all build release deps test test-vm unit lint demo bench clean

all: build

deps:
	@bash scripts/deps.sh

build: deps
	$(CARGO) build --all-targets

release: deps
	$(CARGO) build --release --bin flanneld

# All tests: formatting, lints, unit tests, and the integration tests (real etcd, network namespaces;
# those need root and skip with a printed reason without it). Every skip is listed at the end;
# FLANNEL_TEST_STRICT=1 (set by .ci/run) turns each skip into a failure.
SKIP_LOG := $(CURDIR)/target/test-skips.log
test: deps lint
	@mkdir -p target && rm -f $(SKIP_LOG)
	FLANNEL_TEST_SKIP_LOG=$(SKIP_LOG) $(CARGO) test --all-targets --no-fail-fast -- --test-threads=2; \
	  status=$$?; \
	  if [ -s $(SKIP_LOG) ]; then echo "== skipped tests (prerequisite missing) =="; cat $(SKIP_LOG); \
	  else echo "== no test was skipped =="; fi; \
	  exit $$status

# The kernel scenarios this machine's kernel cannot run (ipip, kernel WireGuard: tests/vm_*.rs) in a
# QEMU VM with a Debian kernel (scripts/vm-testbed.sh; cached under target/vm-cache). `make test`
# runs the same harness (tests/kernel_vm.rs) among the other tests.
test-vm: deps
	@mkdir -p target
	FLANNEL_TEST_SKIP_LOG=$(SKIP_LOG) $(CARGO) test --test kernel_vm -- --nocapture --test-threads=1

unit: deps
	$(CARGO) test --lib

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

demo: deps
	$(CARGO) build --bin flanneld --example demo
	./target/debug/examples/demo ./target/debug/flanneld 3 vxlan

bench: deps
	$(CARGO) build --release --bin flanneld --example bench --example churn
	./target/release/examples/bench ./target/release/flanneld 1000 5000
	./target/release/examples/churn ./target/release/flanneld 5000 60 100

clean:
	$(CARGO) clean
