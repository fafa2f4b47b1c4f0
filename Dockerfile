# syntax=docker/dockerfile:1
# The relay as a container image (deploy/kubernetes runs it):
#   docker build -t outboxd:0.1.0 .
# Build stage: the release binary with the default sinks (Kafka, Redis, NATS). librdkafka
# is built from source here and links the system OpenSSL (libssl-dev) and zlib.
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# deploy/image/check.sh runs exactly this command and checks the binary's shared
# libraries against the runtime stage below; keep the two in step.
RUN cargo build --release --locked --bin outboxd \
 && cp target/release/outboxd /usr/local/bin/outboxd

# Runtime: Debian slim has libc6, libgcc-s1 and zlib1g; the binary also links libssl3.
# ca-certificates for the brokers' public CAs.
FROM debian:bookworm-slim
# RUNTIME_PACKAGES (read by deploy/image/check.sh)
RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl3 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/outboxd /usr/local/bin/outboxd
# Not root; the same uid as deploy/kubernetes's securityContext.
USER 65532:65532
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/outboxd"]
# Configuration from a mounted file; every key can also come from the environment
# (OUTBOXD__DATABASE__URL, OUTBOXD__KAFKA__BROKERS, ...).
CMD ["--config", "/etc/outboxd/outboxd.toml", "run"]
