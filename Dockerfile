# syntax=docker/dockerfile:1
#
# flanneld (Rust drop-in for flannel) container image, laid out like upstream's:
#   /opt/bin/flanneld            the daemon (ENTRYPOINT)
#   /opt/bin/install-conf        -> flanneld: atomic CNI config install (the install-cni init container)
#   /opt/bin/mk-docker-opts.sh   -> flanneld: subnet.env -> Docker daemon options
# plus iptables (both backends, chosen to match the host on first use), nftables and iproute2.
#
#   docker build -t ghcr.io/flanneld-rs/flanneld:v0.1.0 .
#
# ghcr.io/flanneld-rs is a placeholder registry: tag and push to your own, and change the image
# lines of manifests/kube-flannel.yml to match.

ARG RUST_IMAGE=rust:1-bookworm
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS builder
# etcd-client compiles etcd's protobuf definitions at build time.
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Printed by `flanneld --version` (upstream injects `git describe` the same way).
ARG VERSION=v0.1.0
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    FLANNELD_BUILD_VERSION="${VERSION}" cargo build --release --locked --bin flanneld \
 && install -D -m 0755 target/release/flanneld /out/flanneld

FROM ${BASE_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables nftables iproute2 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=builder /out/flanneld /opt/bin/flanneld
COPY --chmod=0755 manifests/image/iptables-wrapper.sh /usr/sbin/iptables-wrapper
# The tools are flanneld itself, picked by the name it is run as.
RUN ln -s flanneld /opt/bin/install-conf \
 && ln -s flanneld /opt/bin/mk-docker-opts.sh \
 && ln -sf iptables-wrapper /usr/sbin/iptables \
 && ln -sf iptables-wrapper /usr/sbin/iptables-save \
 && ln -sf iptables-wrapper /usr/sbin/iptables-restore \
 && ln -sf iptables-wrapper /usr/sbin/ip6tables \
 && ln -sf iptables-wrapper /usr/sbin/ip6tables-save \
 && ln -sf iptables-wrapper /usr/sbin/ip6tables-restore \
 && mkdir -p /etc/iproute2/rt_protos.d \
 && echo "70 flannel" > /etc/iproute2/rt_protos.d/flannel.conf \
 && /opt/bin/flanneld --version
ENTRYPOINT ["/opt/bin/flanneld"]
