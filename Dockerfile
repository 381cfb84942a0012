# syntax=docker/dockerfile:1
#
# One image for the whole agent: the five services and the `toronto` CLI. The
# container's command picks what runs:
#
#   docker build --build-arg TORONTO_BUILD_GIT_SHA="$(git rev-parse HEAD)" -t toronto-devops .
#   docker run --rm -e TORONTO_NATS_URL=nats://nats:4222 toronto-devops toronto-planner
#
# docker-compose.yml runs the whole stack from this image. Needs BuildKit (the default
# builder since Docker 23) for the cache mounts below.

FROM rust:1.95-slim-bookworm AS builder
WORKDIR /src
COPY . .
# Stamped into every binary (`BuildInfo.git_sha`) through `option_env!`; `unknown` when
# not given.
ARG TORONTO_BUILD_GIT_SHA=unknown
# The registry and target directory live in cache mounts, so a rebuild only compiles
# what changed; the binaries are copied out of the mount in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    set -eux; \
    cargo build --release --locked -p toronto-cli -p toronto-planner -p toronto-deployer \
        -p toronto-monitor -p toronto-incident-commander -p toronto-chat-bridge -p toronto-console; \
    mkdir -p /out; \
    cp target/release/toronto \
       target/release/toronto-planner \
       target/release/toronto-deployer \
       target/release/toronto-monitor \
       target/release/toronto-incident-commander \
       target/release/toronto-chat-bridge \
       target/release/toronto-console \
       /out/

FROM debian:bookworm-slim AS runtime
# ca-certificates: TLS to NATS verifies against the system roots (rustls-native-certs).
# curl: the HEALTHCHECK below (and the one in docker-compose.yml).
# hadolint ignore=DL3008
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates curl; \
    rm -rf /var/lib/apt/lists/*; \
    groupadd --system --gid 10001 toronto; \
    useradd --system --uid 10001 --gid toronto --home-dir /var/lib/toronto --create-home \
        --shell /usr/sbin/nologin toronto
COPY --from=builder \
    /out/toronto \
    /out/toronto-planner \
    /out/toronto-deployer \
    /out/toronto-monitor \
    /out/toronto-incident-commander \
    /out/toronto-chat-bridge \
    /out/toronto-console \
    /usr/local/bin/
USER 10001:10001
WORKDIR /var/lib/toronto
# In a container the health/metrics server must listen on every interface.
ENV TORONTO_HTTP_ADDR=0.0.0.0:8080 \
    TORONTO_LOG_FORMAT=json
EXPOSE 8080
# The services finish in-flight requests on SIGTERM (TORONTO_SHUTDOWN_GRACE_SECONDS, 20 s by
# default) and exit 0: give them more than that (`docker stop -t 30`, compose's
# stop_grace_period: 30s).
STOPSIGNAL SIGTERM
# /readyz answers 200 once the service is connected to NATS and serving, 503 otherwise.
# The port is taken from TORONTO_HTTP_ADDR so that overriding it keeps the check right.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["sh", "-c", "curl -fsS -o /dev/null \"http://127.0.0.1:${TORONTO_HTTP_ADDR##*:}/readyz\""]
CMD ["toronto", "--help"]
