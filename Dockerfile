# syntax=docker/dockerfile:1
#
# presenced and the example gateway (load generator) as static binaries in a
# distroless image that runs as a non-root user.
#
#   docker build -t presenced:dev --build-arg VERSION=$(git describe --always --dirty) .
#   docker run --rm -e NATS_URL=nats://nats:4222 -e REDIS_URL=redis://redis:6379/0 -p 8080:8080 presenced:dev
#   docker run --rm presenced:dev check      # checks Redis and NATS with the same settings
#
# Health: the image has no shell, so it declares no HEALTHCHECK. Point the
# orchestrator at the HTTP endpoint (HTTP_ADDR, default :8080) instead:
#   liveness  GET /healthz  200 while the process runs
#   readiness GET /readyz   200 when Redis, NATS and the expiry subscription are up
# (Kubernetes: httpGet probes; Compose: see docker-compose.yml.)

ARG GO_VERSION=1.26

FROM golang:${GO_VERSION} AS build
WORKDIR /src
# Modules first, so that a source change does not download them again.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
ENV CGO_ENABLED=0
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
	go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/presenced ./cmd/presenced && \
	go build -trimpath -ldflags "-s -w" -o /out/presenced-gateway ./examples/gateway

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/presenced /out/presenced-gateway /
# nonroot is uid 65532 in distroless; numeric, so runAsNonRoot can verify it.
USER 65532:65532
EXPOSE 8080
ENV HTTP_ADDR=:8080
ENTRYPOINT ["/presenced"]
