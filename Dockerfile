# cloudflare-argo-exporter: a static binary in an otherwise empty image.
#
#   docker build -t cloudflare-argo-exporter .
#   docker run --rm -p 9832:9832 cloudflare-argo-exporter demo
#
# scripts/build-static builds the same binary without Docker (CI runs it);
# keep its cargo command and the one below in step.

# Alpine: the host target is *-linux-musl, so the binary is static and its DNS
# resolver needs no NSS modules in the empty final image. TLS is rustls with
# built-in webpki roots, so no OpenSSL and no CA bundle either.
FROM rust:1.95-alpine AS builder

# gcc comes with the image; ring's C and assembly need musl's headers and crt
# files. `~1.2` pins the musl series without breaking on Alpine's -rN bumps.
RUN apk add --no-cache musl-dev~1.2

WORKDIR /src

# Dependencies in a layer of their own: it is rebuilt only when Cargo.toml,
# Cargo.lock or the benches change, not on every source edit. benches/ is here
# because Cargo.toml names a [[bench]] and cargo refuses a manifest whose
# target file is missing (nothing in it is compiled).
COPY Cargo.toml Cargo.lock ./
COPY benches ./benches
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && RUSTFLAGS="-C target-feature=+crt-static" \
       cargo build --release --locked --target "$(rustc --print host-tuple)" \
    && rm -rf src

COPY src ./src
# COPY keeps the files' old mtimes, which cargo would take for the dummy build's
# output being fresh: touch them so the real sources are compiled.
# Same command as scripts/build-static (there on the glibc target).
RUN touch src/main.rs src/lib.rs \
    && RUSTFLAGS="-C target-feature=+crt-static" \
       cargo build --release --locked --target "$(rustc --print host-tuple)" \
    && cp "target/$(rustc --print host-tuple)/release/cloudflare-argo-exporter" /cloudflare-argo-exporter \
    && /cloudflare-argo-exporter --version

FROM scratch

LABEL org.opencontainers.image.title="cloudflare-argo-exporter" \
      org.opencontainers.image.description="Prometheus exporter for Cloudflare Argo Smart Routing" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=builder /cloudflare-argo-exporter /usr/local/bin/cloudflare-argo-exporter

# No /etc/passwd is needed for a numeric user; 65532 is the usual "nonroot".
USER 65532:65532

EXPOSE 9832

# Exec form: the image has no shell. The subcommand reads the same
# --web.listen-address environment variable (ARGO_EXPORTER_WEB_LISTEN_ADDRESS)
# and --web.config.file variable as the server, so change the port through the
# environment, not a flag, or this checks the default :9832.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/cloudflare-argo-exporter", "healthcheck"]

ENTRYPOINT ["/usr/local/bin/cloudflare-argo-exporter"]
