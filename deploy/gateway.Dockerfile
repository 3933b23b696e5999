# syntax=docker/dockerfile:1.7
# tidings-gateway: build with the repository root as context:
#   docker build -f deploy/gateway.Dockerfile -t tidings-gateway .
# Stage 1 compiles the release binary and the health probe; stage 2 is distroless (glibc,
# CA certificates, tzdata, no shell, no package manager) running as uid 65532.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Only what the workspace needs (see gateway.Dockerfile.dockerignore).
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY shared shared
COPY gateway gateway
COPY worker worker
COPY loadtest loadtest
COPY tests tests
COPY fuzz-entries fuzz-entries
COPY deploy/probe deploy/probe
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p tidings-gateway --bin tidings-gateway \
    && install -D -m 0755 target/release/tidings-gateway /out/tidings-gateway \
    && rustc --edition 2024 -C opt-level=2 -C strip=symbols -o /out/tidings-probe deploy/probe/tidings-probe.rs

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/tidings-gateway /out/tidings-probe /usr/local/bin/
ENV TIDINGS_LISTEN=0.0.0.0:8080 \
    TIDINGS_LOG_FORMAT=json
USER 65532:65532
EXPOSE 8080
# Exec form: no shell in the image. Kubernetes ignores HEALTHCHECK and uses its own
# httpGet probes on /healthz and /readyz (k8s/base).
HEALTHCHECK --interval=10s --timeout=4s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/tidings-probe", "http://127.0.0.1:8080/readyz"]
ENTRYPOINT ["/usr/local/bin/tidings-gateway"]
