# syntax=docker/dockerfile:1
#
# mongo-projector container image.
#
#   docker build --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" \
#     -t mongo-projector .
#   docker run --rm -e MONGODB_URI="mongodb://db:27017/?replicaSet=rs0" -p 9464:9464 mongo-projector
#
# The image runs `mongo-projector run` on /etc/mongo-projector/config.toml (a copy of
# config/example.toml; mount your own file over it) and logs JSON lines to stdout. The connection
# string comes from the MONGODB_URI environment variable only; it is never baked into the image.
#
# It holds the production build: without the `embedded` feature, so without the embedded test
# server, `demo` and `bench` (the binary says so if asked for them). Build those from source.
#
# Both base images are pinned by digest, the tag kept beside it for the reader: a moved tag cannot
# change what is built, and a rebuild of the same commit takes the same bases. The builder's
# Debian release must match the runtime image's (glibc): bookworm and cc-debian12. To move a pin,
# look up the tag's current digest (the digest of the multi-platform index, not of one platform):
#   docker buildx imagetools inspect rust:1.95-slim-bookworm
#   docker buildx imagetools inspect gcr.io/distroless/cc-debian12:nonroot
# and replace tag and digest together.

# ---------------------------------------------------------------------------------------------
# Builder: a release build of the mongo-projector package with the committed Cargo.lock.
FROM rust:1.95-slim-bookworm@sha256:d7482085ff5b415f84dba5647ae71606650bdef00db7aeb69f4b3d170c3e4082 AS builder
WORKDIR /src

# Dependency layer: the manifests of the three workspace members and the lock file, with empty
# stand-ins for every target they declare (Cargo refuses to load a workspace with a missing
# target), so the crates.io dependencies are compiled once and cached until a manifest or
# Cargo.lock changes. mongo-sim is only a manifest here and stays one: the production build does
# not use it (it is the `embedded` feature's optional dependency and a dev-dependency).
COPY Cargo.toml Cargo.lock ./
COPY bson-order/Cargo.toml bson-order/
COPY mongo-sim/Cargo.toml mongo-sim/
RUN mkdir -p src bson-order/src mongo-sim/src mongo-sim/benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs bson-order/src/lib.rs mongo-sim/src/lib.rs \
    && echo 'fn main() {}' > mongo-sim/src/main.rs \
    && echo 'fn main() {}' > mongo-sim/benches/server.rs \
    && cargo build --release --locked -p mongo-projector --no-default-features \
    && rm -rf src bson-order/src

# The real sources. Cargo decides what to rebuild from modification times, and COPY keeps the
# build context's (older) ones, so the crate roots are touched to force the workspace crates to be
# rebuilt over the stand-ins.
COPY build.rs ./
COPY src src
COPY bson-order/src bson-order/src

# The revision the binary reports in mongo_projector_build_info (build.rs reads it; the build
# context has no .git to ask). Declared after the dependency layer so that a new revision does
# not invalidate it, and given to this one command only: nothing named MONGO_PROJECTOR_* may be
# set in the image, since at run time those are configuration overrides.
ARG REVISION=
RUN touch src/main.rs src/lib.rs bson-order/src/lib.rs \
    && PROJECTOR_BUILD_REVISION="${REVISION}" \
       cargo build --release --locked -p mongo-projector --no-default-features \
    && install -D -m 0755 target/release/mongo-projector /out/mongo-projector

# ---------------------------------------------------------------------------------------------
# Runtime: distroless "cc" (glibc, libgcc, CA certificates, tzdata; no shell, no package
# manager). TLS to MongoDB uses rustls with bundled roots, so nothing else is needed.
FROM gcr.io/distroless/cc-debian12:nonroot@sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f

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

# [http] address: /metrics (Prometheus), /startupz (startup), /healthz (liveness), /readyz
# (readiness), /status (JSON).
EXPOSE 9464

# No HEALTHCHECK: the runtime image has no shell and no HTTP client to run one, and Kubernetes
# ignores it anyway (the Helm chart probes /startupz, /healthz and /readyz). Under plain Docker,
# probe http://<container>:9464/healthz from outside the container.

# SIGTERM starts a graceful stop: in-flight writes are drained and checkpoints written within
# [shutdown] deadline (10s by default). Give the runtime longer than that before it kills the
# process (docker stop -t 30, compose stop_grace_period, terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM

ENTRYPOINT ["/usr/local/bin/mongo-projector"]
CMD ["run", "--config", "/etc/mongo-projector/config.toml", "--log-format", "json"]
