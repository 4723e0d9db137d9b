# syntax=docker/dockerfile:1
#
# mongo-projector container image.
#
#   docker build -t mongo-projector .
#   docker run --rm -e MONGODB_URI="mongodb://db:27017/?replicaSet=rs0" -p 9464:9464 mongo-projector
#
# The image runs `mongo-projector run` on /etc/mongo-projector/config.toml (a copy of
# config/example.toml; mount your own file over it) and logs JSON lines to stdout. The connection
# string comes from the MONGODB_URI environment variable only; it is never baked into the image.

# The builder's Debian release must match the runtime image's (glibc): bookworm and cc-debian12.
ARG RUST_VERSION=1.95
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# ---------------------------------------------------------------------------------------------
# Builder: a release build of the mongo-projector package with the committed Cargo.lock.
FROM rust:${RUST_VERSION}-slim-bookworm AS builder
WORKDIR /src

# Dependency layer: only the manifests and the lock file of both workspace members (the root
# package depends on mongo-sim by path), with empty stand-ins for every declared target, so the
# crates.io dependencies are compiled once and cached until Cargo.toml or Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
COPY mongo-sim/Cargo.toml mongo-sim/
RUN mkdir -p src mongo-sim/src mongo-sim/benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs mongo-sim/src/lib.rs \
    && echo 'fn main() {}' > mongo-sim/src/main.rs \
    && echo 'fn main() {}' > mongo-sim/benches/server.rs \
    && cargo build --release --locked -p mongo-projector \
    && rm -rf src mongo-sim/src mongo-sim/benches

# The real sources (config/example.toml is compiled into the binary for the demo). Cargo decides
# what to rebuild from modification times, and COPY keeps the build context's (older) ones, so the
# crate roots are touched to force the workspace crates to be rebuilt over the stand-ins.
COPY config config
COPY src src
COPY mongo-sim/src mongo-sim/src
COPY mongo-sim/benches mongo-sim/benches
RUN touch src/main.rs src/lib.rs mongo-sim/src/lib.rs mongo-sim/src/main.rs \
    && cargo build --release --locked -p mongo-projector \
    && install -D -m 0755 target/release/mongo-projector /out/mongo-projector

# ---------------------------------------------------------------------------------------------
# Runtime: distroless "cc" (glibc, libgcc, CA certificates, tzdata; no shell, no package
# manager). TLS to MongoDB uses rustls with bundled roots, so nothing else is needed.
FROM ${RUNTIME_IMAGE}

ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="mongo-projector" \
      org.opencontainers.image.description="Keeps MongoDB read models in step with an event-sourced event collection." \
      org.opencontainers.image.source="https://github.com/mongo-projector/mongo-projector" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"

COPY --from=builder --chown=0:0 /out/mongo-projector /usr/local/bin/mongo-projector
# The default configuration: root-owned and read-only for the process. Replace it by mounting a
# file (or a Kubernetes ConfigMap) at /etc/mongo-projector/config.toml.
COPY --chown=0:0 config/example.toml /etc/mongo-projector/config.toml

# Numeric non-root user (distroless "nonroot", 65532), so that Kubernetes' runAsNonRoot can verify
# it without resolving a name. Nothing in the image needs to be writable: the root filesystem can
# be mounted read-only.
USER 65532:65532

# /metrics (Prometheus), /healthz (liveness), /readyz (readiness), /status (JSON): [http] address.
EXPOSE 9464

# No HEALTHCHECK: the runtime image has no shell and no HTTP client to run one, and Kubernetes
# ignores it anyway (the Helm chart probes /healthz and /readyz). Under plain Docker, probe
# http://<container>:9464/healthz from outside the container.

# SIGTERM starts a graceful stop: in-flight writes are drained and checkpoints written within
# [shutdown] deadline (10s by default). Give the runtime longer than that before it kills the
# process (docker stop -t 30, compose stop_grace_period, terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM

ENTRYPOINT ["/usr/local/bin/mongo-projector"]
CMD ["run", "--config", "/etc/mongo-projector/config.toml", "--log-format", "json"]
