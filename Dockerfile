# syntax=docker/dockerfile:1
#
# Switchboard's container image: a release build in a Rust image, the binary alone in a
# slim Debian runtime. Build and run:
#
#     docker build -t switchboard .
#     docker run --rm -p 6001:6001 -e SWITCHBOARD_JWT_SECRET=change-me switchboard
#
# See docs/DEPLOYMENT.md for Compose and Kubernetes.

# The same Debian release (bookworm) in both stages, so the binary finds the glibc it was
# linked against.
ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
WORKDIR /src

# Dependencies first, in their own layer: a stand-in crate with the real Cargo.toml and
# Cargo.lock builds every dependency, and that layer is reused until the manifest or the lock
# file changes (the cargo-chef idea without the extra tool). The crate registry is a BuildKit
# cache mount, so even a changed lock file downloads only what is new.
COPY Cargo.toml Cargo.lock ./
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    mkdir -p src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --bin switchboard \
    && rm -rf src

# Then the crate itself. COPY keeps the files' own modification times, which may be older
# than the stand-in's build: touch them so cargo rebuilds the crate, not just the deps.
COPY src ./src
COPY migrations ./migrations
COPY examples ./examples
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin switchboard \
    && cp target/release/switchboard /usr/local/bin/switchboard

FROM debian:${DEBIAN_RELEASE}-slim AS runtime

# ca-certificates: TLS to MySQL, Redis (rediss://) and the back-end bridge.
# curl: the HEALTHCHECK below; switchboard has no health-check subcommand of its own.
# Package versions are left to the release's security updates rather than pinned (DL3008).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*

# A fixed, unprivileged uid, so Kubernetes' runAsNonRoot can check it without a name lookup.
RUN groupadd --system --gid 10001 switchboard \
    && useradd --system --uid 10001 --gid switchboard --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin switchboard

COPY --from=build /usr/local/bin/switchboard /usr/local/bin/switchboard

USER 10001:10001
ENV SWITCHBOARD_LISTEN=0.0.0.0:6001 \
    SWITCHBOARD_LOG_FORMAT=json
EXPOSE 6001

# /health answers while the process serves; /ready (Redis reachable, not draining) is for the
# load balancer, not for restarting the container.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["curl", "--fail", "--silent", "--show-error", "--max-time", "2", "http://127.0.0.1:6001/health"]

# SIGTERM starts the drain (SWITCHBOARD_DRAIN_TIME); give `docker stop` more than that
# (`docker stop -t 30`, Compose's stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/switchboard"]
