#!/bin/sh
# iptables backend selector for the flanneld image.
#
# The image ships both iptables backends (xtables-legacy-multi and xtables-nft-multi). Rules must go
# to the backend the host (kubelet, kube-proxy) already uses, or the two rule sets never see each
# other. The image links iptables, iptables-save, iptables-restore and their ip6tables twins to this
# script. On the first call it picks the host's backend, re-points all six links at that backend's
# multi-call binary (so later calls run it directly), then runs the command it was called as.
#
# Choice: a backend holding the KUBE-IPTABLES-HINT or KUBE-KUBELET-CANARY chain (created by the
# kubelet in the mangle table) wins; otherwise the backend with more rules; nft on a tie.
set -eu

dir=$(dirname "$0")
tool=$(basename "$0")

has_kubelet_hint() {
	for save in iptables-save ip6tables-save; do
		if "$dir/xtables-$1-multi" "$save" -t mangle 2>/dev/null |
			grep -q -e '^:KUBE-IPTABLES-HINT' -e '^:KUBE-KUBELET-CANARY'; then
			return 0
		fi
	done
	return 1
}

rule_count() {
	{
		"$dir/xtables-$1-multi" iptables-save 2>/dev/null || true
		"$dir/xtables-$1-multi" ip6tables-save 2>/dev/null || true
	} | grep -c '^-' || true
}

if has_kubelet_hint nft; then
	mode=nft
elif has_kubelet_hint legacy; then
	mode=legacy
elif [ "$(rule_count legacy)" -gt "$(rule_count nft)" ]; then
	mode=legacy
else
	mode=nft
fi

for link in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
	# ln -sf replaces the link atomically (new link, then rename), so a concurrent call sees either
	# this script or the chosen backend, never a missing file.
	ln -sf "xtables-$mode-multi" "$dir/$link"
done

exec "$dir/xtables-$mode-multi" "$tool" "$@"
