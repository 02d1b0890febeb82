#!/usr/bin/env bash
# Installs (as root) or names (otherwise) the Debian packages that building, testing and the demo need.
# Each entry: <package> <a file that proves it is installed>.
set -euo pipefail

needed=(
  "protobuf-compiler /usr/bin/protoc"
  "libprotobuf-dev /usr/include/google/protobuf/descriptor.proto"
  "etcd-server /usr/bin/etcd"
  "etcd-client /usr/bin/etcdctl"
  "iproute2 /usr/sbin/ip"
  "iptables /usr/sbin/iptables"
  "nftables /usr/sbin/nft"
  "iputils-ping /usr/bin/ping"
  "openssl /usr/bin/openssl"
  "procps /usr/bin/pgrep"
  "make /usr/bin/make"
  "iperf3 /usr/bin/iperf3"
  # The VM testbed (make test-vm, tests/kernel_vm.rs, scripts/vm-testbed.sh).
  "qemu-system-x86 /usr/bin/qemu-system-x86_64"
  "busybox-static /bin/busybox"
  "cpio /usr/bin/cpio"
  "kmod /usr/bin/kmod"
  "binutils /usr/bin/strip"
  "curl /usr/bin/curl"
  "util-linux /usr/bin/unshare"
  # WireGuard interop peers (tests/e2e_wireguard.rs, bench).
  "wireguard-tools /usr/bin/wg"
  "wireguard-go /usr/bin/wireguard-go"
)

missing=()
for entry in "${needed[@]}"; do
  pkg=${entry%% *}
  file=${entry#* }
  [ -e "$file" ] || missing+=("$pkg")
done

if ! command -v cargo >/dev/null 2>&1; then
  echo "deps: cargo is not on PATH; install a Rust toolchain (1.85 or newer) first" >&2
  exit 1
fi

if [ ${#missing[@]} -eq 0 ]; then
  echo "deps: all system packages present"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "deps: missing packages: ${missing[*]}" >&2
  echo "deps: install them with: sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
  exit 1
fi

echo "deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "deps: installed ${missing[*]}"
