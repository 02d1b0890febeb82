#!/usr/bin/env bash
# The VM testbed: boots a Debian cloud kernel under QEMU (software emulation, TCG: nested KVM hangs
# on the build hosts) with an initramfs holding busybox, dash, the tools the kernel e2e tests run
# (iproute2, ping, curl, iptables, nft, etcd, kmod, wg when installed), the kernel modules, the
# flanneld binary and the test binaries given on the command line; runs each test binary inside the
# VM with `--ignored --test-threads=1` and writes everything to the serial console, which this
# script copies to --log. The Rust harness (tests/kernel_vm.rs) reads the markers:
#   === VMTEST BEGIN <name>        before a test binary runs
#   === VMTEST END <name> rc=<n>   after it exited with status n
#   === VMTEST DONE                all binaries ran (missing: the VM died or timed out)
#
# Cached under --cache (default target/vm-cache), so a second run only repacks what changed:
#   kernel-<version>/      vmlinuz and the module tree (with depmod's files), from `apt-get download`
#   base-<hash>.cpio.gz    busybox, tools, shared libraries, modules, /init; keyed by the kernel
#                          version, this script and the tools' contents
#   payload-<hash>.cpio    stripped test binaries and flanneld; keyed by the binaries' contents
#
# usage: scripts/vm-testbed.sh --flanneld <path> --log <file> [--cache <dir>] [--timeout <s>]
#                              [--env KEY=VALUE]... <test-binary>...
# Exit status: 0 when the VM ran to the end (look at the log for the tests' results), 2 when a
# prerequisite is missing (the reason is the last line on stderr), 1 on other failures.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
cache="$repo/target/vm-cache"
flanneld=""
log=""
timeout=1500
envs=()
tests=()

missing() { echo "vm-testbed: prerequisite missing: $*" >&2; exit 2; }
die() { echo "vm-testbed: $*" >&2; exit 1; }
note() { echo "vm-testbed: $*" >&2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --cache) cache=$2; shift 2 ;;
    --flanneld) flanneld=$2; shift 2 ;;
    --log) log=$2; shift 2 ;;
    --timeout) timeout=$2; shift 2 ;;
    --env) envs+=("$2"); shift 2 ;;
    -*) die "unknown option $1" ;;
    *) tests+=("$1"); shift ;;
  esac
done
[ -n "$flanneld" ] && [ -x "$flanneld" ] || die "--flanneld <path to the flanneld binary> is required"
[ -n "$log" ] || die "--log <file> is required"
[ ${#tests[@]} -gt 0 ] || die "no test binary given"

# --- host tools -------------------------------------------------------------------------------
# Debian package -> a file it installs. Installed with apt when missing and running as root.
host_packages=(
  "qemu-system-x86 /usr/bin/qemu-system-x86_64"
  "busybox-static /bin/busybox"
  "cpio /usr/bin/cpio"
  "kmod /usr/bin/kmod"
  "dash /usr/bin/dash"
  "binutils /usr/bin/strip"
  "iproute2 /usr/sbin/ip"
  "iputils-ping /usr/bin/ping"
  "curl /usr/bin/curl"
  "util-linux /usr/bin/unshare"
  "procps /usr/sbin/sysctl"
  "iptables /usr/sbin/iptables"
  "nftables /usr/sbin/nft"
  "etcd-server /usr/bin/etcd"
  "etcd-client /usr/bin/etcdctl"
)
need=()
for entry in "${host_packages[@]}"; do
  [ -e "${entry#* }" ] || need+=("${entry%% *}")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    missing "packages ${need[*]} (install them with apt-get install --no-install-recommends)"
  fi
  note "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || true
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null ||
    missing "apt-get install ${need[*]} failed"
fi

mkdir -p "$cache"
cache=$(cd "$cache" && pwd)

# --- kernel -----------------------------------------------------------------------------------
# The package linux-image-cloud-amd64 depends on (linux-image-<version>-cloud-amd64).
kernel_package() {
  apt-cache depends linux-image-cloud-amd64 2>/dev/null |
    awk '/Depends: linux-image-[0-9]/ { print $2; exit }' || true
}
kpkg=$(kernel_package)
if [ -z "$kpkg" ] && [ "$(id -u)" -eq 0 ] && ! ls -d "$cache"/kernel-* >/dev/null 2>&1; then
  note "apt does not know linux-image-cloud-amd64; running apt-get update"
  apt-get update -qq >/dev/null 2>&1 || true
  kpkg=$(kernel_package)
fi
if [ -z "$kpkg" ]; then
  # No apt metadata: use the newest kernel already in the cache.
  kdir=$(ls -d "$cache"/kernel-* 2>/dev/null | sort -V | tail -1 || true)
  [ -n "$kdir" ] || missing "apt does not know linux-image-cloud-amd64 (run apt-get update) and no kernel is cached"
else
  kdir="$cache/kernel-${kpkg#linux-image-}"
fi
kver=${kdir##*/kernel-}
if [ ! -f "$kdir/ready" ]; then
  note "fetching $kpkg with apt-get download"
  work=$(mktemp -d "$cache/dl.XXXXXX")
  chmod 0777 "$work" # apt drops privileges to _apt for downloads
  (cd "$work" && apt-get download -q "$kpkg" >/dev/null 2>"$work/apt.err") ||
    { cat "$work/apt.err" >&2; rm -rf "$work"; missing "apt-get download $kpkg failed (no network?)"; }
  dpkg-deb -x "$work"/linux-image-*.deb "$work/root"
  rm -rf "$kdir" && mkdir -p "$kdir/root/lib/modules/$kver/kernel/drivers/char"
  cp "$work/root/boot/vmlinuz-$kver" "$kdir/vmlinuz"
  src="$work/root/lib/modules/$kver"
  dst="$kdir/root/lib/modules/$kver"
  cp -a "$src"/modules.order "$src"/modules.builtin "$src"/modules.builtin.modinfo "$dst/"
  for part in net drivers/net drivers/virtio lib crypto arch drivers/char/hw_random; do
    [ -d "$src/kernel/$part" ] && cp -a "$src/kernel/$part" "$dst/kernel/$(dirname "$part")/"
  done
  depmod -b "$kdir/root" "$kver"
  rm -rf "$work"
  touch "$kdir/ready"
fi

# --- base initramfs ---------------------------------------------------------------------------
# Tools copied at their host paths (symlinks resolved). Required ones fail the run when absent;
# optional ones (what other tests may want: wg, wireguard-go, iperf3, tcpdump) are taken when
# installed on the host.
required_tools=(
  /usr/bin/dash /usr/sbin/ip /usr/sbin/bridge /usr/bin/ping /usr/bin/curl /usr/bin/unshare
  /usr/bin/nsenter /usr/bin/kmod /usr/bin/etcd /usr/bin/etcdctl /usr/sbin/nft /usr/sbin/sysctl
  /usr/sbin/iptables /usr/sbin/iptables-save /usr/sbin/iptables-restore
  /usr/sbin/ip6tables /usr/sbin/ip6tables-save /usr/sbin/ip6tables-restore
)
optional_tools=(
  /usr/bin/wg /usr/bin/wireguard-go /usr/bin/iperf3 /usr/bin/tcpdump /usr/sbin/tcpdump
  /usr/sbin/iptables-legacy /usr/sbin/iptables-legacy-save /usr/sbin/iptables-legacy-restore
)
tools=()
for t in "${required_tools[@]}"; do
  [ -e "$t" ] || missing "$t (needed inside the VM)"
  tools+=("$t")
done
for t in "${optional_tools[@]}"; do
  [ -e "$t" ] && tools+=("$t")
done
busybox=/bin/busybox
[ -x "$busybox" ] || busybox=/usr/bin/busybox
[ -x "$busybox" ] || missing "busybox (package busybox-static)"

# Modules loaded at boot (the rest load on demand through /sbin/modprobe).
boot_modules=$(echo virtio-rng veth bridge br_netfilter vxlan ipip tun nf_tables nft_compat \
  nft_chain_nat nft_masq nft_ct nf_nat ip_tables iptable_filter iptable_nat iptable_raw iptable_mangle \
  ip6_tables ip6table_filter ip6table_nat ip6table_raw xt_comment xt_MASQUERADE xt_mark xt_conntrack \
  xt_addrtype wireguard)

base_key=$( {
  echo "$kver" "$boot_modules"
  sha256sum "$0"
  for t in "${tools[@]}" "$busybox"; do sha256sum "$(readlink -f "$t")"; done
} | sha256sum | cut -c1-16)
base="$cache/base-$base_key.cpio.gz"

copy_with_libs() { # <root> <file>...: copies each file (resolved) to its path, plus its libraries
  local root=$1; shift
  local f
  for f in "$@"; do
    mkdir -p "$root$(dirname "$f")"
    cp -L "$f" "$root$f"
    ldd "$f" 2>/dev/null | grep -o '/[^ ]*' | while read -r lib; do
      if [ ! -e "$root$lib" ]; then
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
      fi
    done
  done
}

if [ ! -f "$base" ]; then
  note "building the base initramfs (kernel $kver)"
  root=$(mktemp -d "$cache/base.XXXXXX")
  mkdir -p "$root"/{bin,sbin,proc,sys,dev,run,tmp,etc,root,var,busybox/bin,vmtests}
  ln -s ../run "$root/var/run"
  cp "$busybox" "$root/bin/busybox"
  copy_with_libs "$root" "${tools[@]}"
  ln -s /usr/bin/dash "$root/bin/sh"
  for name in modprobe insmod rmmod lsmod depmod modinfo; do ln -s /usr/bin/kmod "$root/sbin/$name"; done
  # iptables finds its match and target extensions with dlopen, which ldd does not list.
  for dir in /usr/lib/x86_64-linux-gnu/xtables /usr/lib/xtables; do
    if [ -d "$dir" ]; then
      mkdir -p "$root$dir" && cp -a "$dir"/. "$root$dir/"
      for so in "$dir"/*.so; do copy_with_libs "$root" "$so"; done
    fi
  done
  [ -e /etc/protocols ] && cp /etc/protocols "$root/etc/"
  printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
  printf 'root:x:0:\n' >"$root/etc/group"
  printf '127.0.0.1 localhost\n' >"$root/etc/hosts"
  cp -a "$kdir/root/lib/modules" "$root/lib/"
  cat >"$root/init" <<EOF
#!/bin/sh
# PID 1 of the test VM: mounts, modules, then every test binary listed in /vmtests/list.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/busybox/bin
export HOME=/root TMPDIR=/tmp
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
/bin/busybox mkdir -p /dev/pts /dev/shm
/bin/busybox mount -t devpts devpts /dev/pts
/bin/busybox mount -t tmpfs tmpfs /run
/bin/busybox mount -t tmpfs tmpfs /tmp
/bin/busybox mount -t tmpfs tmpfs /dev/shm
/bin/busybox --install -s /busybox/bin
# The test binaries run flanneld at its host path (CARGO_BIN_EXE_flanneld). That path may lie under
# /tmp or /run, which the tmpfs mounts above hide, so it is linked only now.
if [ -f /vmtests/flanneld.path ]; then
  p=\$(cat /vmtests/flanneld.path)
  mkdir -p "\$(dirname "\$p")" && ln -sf /vmtests/flanneld "\$p"
fi
echo /sbin/modprobe >/proc/sys/kernel/modprobe
for m in $boot_modules; do modprobe -q \$m || echo "vm: module \$m did not load"; done
ip link set lo up
echo "=== VMTEST KERNEL \$(uname -r) \$(nproc) cpu(s)"
for t in \$(cat /vmtests/list); do
  echo "=== VMTEST BEGIN \$t"
  start=\$(cut -d' ' -f1 /proc/uptime)
  /vmtests/\$t --ignored --test-threads=1 \$VMTEST_ARGS </dev/null 2>&1
  rc=\$?
  echo "=== VMTEST END \$t rc=\$rc start=\$start end=\$(cut -d' ' -f1 /proc/uptime)"
done
echo "=== VMTEST DONE"
sync
/bin/busybox poweroff -f
EOF
  chmod 0755 "$root/init"
  (cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$base.tmp"
  # The next archive must start 4-byte aligned; the kernel skips zero padding between archives.
  size=$(stat -c %s "$base.tmp")
  head -c $(( (512 - size % 512) % 512 )) /dev/zero >>"$base.tmp"
  mv "$base.tmp" "$base"
  rm -rf "$root"
  # Keep only the newest few base images.
  ls -t "$cache"/base-*.cpio.gz 2>/dev/null | tail -n +4 | xargs -r rm -f
fi

# --- payload: flanneld and the test binaries ----------------------------------------------------
payload_key=$( {
  sha256sum "$0"
  sha256sum "$flanneld"
  for t in "${tests[@]}"; do sha256sum "$t"; echo "$(basename "$t")"; done
  echo "$flanneld"
} | sha256sum | cut -c1-16)
payload="$cache/payload-$payload_key.cpio"
if [ ! -f "$payload" ]; then
  note "packing flanneld and ${#tests[@]} test binaries"
  root=$(mktemp -d "$cache/payload.XXXXXX")
  # flanneld goes to /vmtests; init links it at its host path, which the test binaries were built
  # with (CARGO_BIN_EXE_flanneld), after mounting /tmp and /run (a checkout may live there).
  mkdir -p "$root/vmtests"
  strip --strip-debug -o "$root/vmtests/flanneld" "$flanneld"
  printf '%s\n' "$flanneld" >"$root/vmtests/flanneld.path"
  : >"$root/vmtests/list"
  for t in "${tests[@]}"; do
    # vm_ipip-0123abcd... -> vm_ipip
    name=$(basename "$t" | sed -E 's/-[0-9a-f]{16}$//')
    strip --strip-debug -o "$root/vmtests/$name" "$t"
    echo "$name" >>"$root/vmtests/list"
  done
  # Their shared libraries (the base image has those of the tools; duplicates are the same files).
  for bin in "$flanneld" "${tests[@]}"; do
    ldd "$bin" 2>/dev/null | grep -o '/[^ ]*' | while read -r lib; do
      mkdir -p "$root$(dirname "$lib")" && cp -L "$lib" "$root$lib"
    done
  done
  (cd "$root" && find . -mindepth 1 | cpio -o -H newc --quiet) >"$payload.tmp"
  mv "$payload.tmp" "$payload"
  rm -rf "$root"
  ls -t "$cache"/payload-*.cpio 2>/dev/null | tail -n +3 | xargs -r rm -f
fi

# --- boot ---------------------------------------------------------------------------------------
# The kernel unpacks concatenated archives in order; the payload's /vmtests/list wins.
initrd="$cache/initrd-run.img"
cat "$base" "$payload" >"$initrd"
append="console=ttyS0 panic=-1 quiet loglevel=3"
for kv in "${envs[@]}"; do append="$append $kv"; done
cpus=$(nproc)
[ "$cpus" -gt 2 ] && cpus=2
note "booting kernel $kver (TCG, $cpus vCPU, 2 GiB); console log: $log"
set +e
timeout --foreground -k 10 "$timeout" qemu-system-x86_64 \
  -accel tcg,thread=multi -cpu max -smp "$cpus" -m 2048 \
  -kernel "$kdir/vmlinuz" -initrd "$initrd" -append "$append" \
  -nographic -no-reboot -nic none -device virtio-rng-pci \
  -monitor none -serial "file:$log" </dev/null >/dev/null 2>"$log.qemu"
rc=$?
set -e
if [ $rc -eq 124 ]; then
  note "the VM did not finish within ${timeout}s"
  exit 1
fi
[ $rc -eq 0 ] || { cat "$log.qemu" >&2; die "qemu exited with status $rc"; }
exit 0
