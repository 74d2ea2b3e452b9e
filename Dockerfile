# edgeproxy as a minimal, non-root container image.
#
#   docker build -t edgeproxy .
#   docker run -d -p 80:80 -p 443:443 -p 127.0.0.1:9180:9180 \
#     -v $PWD/edgeproxy.yaml:/etc/edgeproxy/edgeproxy.yaml:ro -v edgeproxy-certs:/var/lib/edgeproxy edgeproxy
#
# deploy/compose/docker-compose.yml runs it in front of Django. The config must set
# listen.metrics: the HEALTHCHECK asks its /healthz.
#
# Two build arguments name the base images, for machines that cannot pull them (the tests
# in deploy/, see docs/operations.md): GO_IMAGE, the build stage's Go toolchain, and BASE,
# the final stage's. Every instruction is the same either way.
ARG GO_IMAGE=golang:1.26
ARG BASE=gcr.io/distroless/static-debian12:nonroot

# Build stage: a static binary (CGO_ENABLED=0: Go's own DNS resolver, no libc), without
# paths of this machine (-trimpath).
FROM ${GO_IMAGE} AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=""
RUN CGO_ENABLED=0 GOOS=linux go build -trimpath -ldflags="-s -w -X main.version=${VERSION}" \
      -o /out/edgeproxy ./cmd/edgeproxy \
 && /out/edgeproxy version \
 && mkdir -p /out/state /out/etc/edgeproxy

# Final stage: distroless "static" has CA certificates, /etc/passwd with the nonroot user
# (65532) and tzdata, and no shell: the HEALTHCHECK runs the binary itself.
FROM ${BASE}
COPY --from=build /out/edgeproxy /edgeproxy
COPY --from=build /out/etc/edgeproxy /etc/edgeproxy
# The certificate cache: owned by the runtime user, and Docker copies that ownership into
# a new named volume mounted here. Configs may write ${STATE_DIRECTORY}, as under systemd;
# tls.acme.cache_dir defaults to ${STATE_DIRECTORY}/acme.
COPY --from=build --chown=65532:65532 /out/state /var/lib/edgeproxy
ENV STATE_DIRECTORY=/var/lib/edgeproxy
VOLUME ["/var/lib/edgeproxy"]
USER 65532:65532
# 80: ACME HTTP-01 and the redirect to https; 443: https. Binding them as non-root needs
# net.ipv4.ip_unprivileged_port_start=0 in the container, Docker's default since 20.10.
EXPOSE 80 443
HEALTHCHECK --interval=30s --timeout=10s --start-period=10s --retries=3 \
  CMD ["/edgeproxy", "healthcheck", "-config", "/etc/edgeproxy/edgeproxy.yaml"]
# `docker run IMAGE` serves with the mounted config; `docker run IMAGE validate -config F`
# or `... version` runs another command.
ENTRYPOINT ["/edgeproxy"]
CMD ["run", "-config", "/etc/edgeproxy/edgeproxy.yaml"]
