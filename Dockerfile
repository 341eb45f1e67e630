# presenced and the example gateway (load generator) as static binaries in a
# distroless image that runs as a non-root user.
#
#   docker build -t presenced:dev --build-arg VERSION=$(git describe --always --dirty) .
#   docker run --rm -e NATS_URL=nats://nats:4222 -e REDIS_URL=redis://redis:6379/0 -p 8080:8080 presenced:dev
#   docker run --rm presenced:dev check      # checks Redis and NATS with the same settings
#
# It builds with BuildKit and with the classic builder (DOCKER_BUILDKIT=0,
# docker-compose 1.29): no RUN --mount, and no `# syntax=` line, so BuildKit
# uses its built-in frontend instead of pulling one. Go modules are cached
# in their own layer, downloaded again only when go.mod or go.sum change.
#
# The base images are build arguments, e.g. for a registry mirror:
#   --build-arg GO_IMAGE=mirror.example/golang:1.26
#   --build-arg RUNTIME_IMAGE=mirror.example/distroless/static-debian12:nonroot
#
# Health: the image has no shell, so it declares no HEALTHCHECK. Point the
# orchestrator at the HTTP endpoint (HTTP_ADDR, default :8080) instead:
#   liveness  GET /healthz  200 while the process runs
#   readiness GET /readyz   200 when Redis, NATS and the expiry subscription are up
# (Kubernetes: httpGet probes; Compose: see docker-compose.yml.)

ARG GO_IMAGE=golang:1.26
ARG RUNTIME_IMAGE=gcr.io/distroless/static-debian12:nonroot

FROM ${GO_IMAGE} AS build
WORKDIR /src
# Modules first, so that a source change does not download them again.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
# The build cache goes with the layer: without cache mounts no later build
# would start from it.
RUN export CGO_ENABLED=0 && \
	go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/presenced ./cmd/presenced && \
	go build -trimpath -ldflags "-s -w" -o /out/presenced-gateway ./examples/gateway && \
	go clean -cache

FROM ${RUNTIME_IMAGE}
COPY --from=build /out/presenced /out/presenced-gateway /
# nonroot is uid 65532 in distroless; numeric, so runAsNonRoot can verify it.
USER 65532:65532
EXPOSE 8080
ENV HTTP_ADDR=:8080
ENTRYPOINT ["/presenced"]
