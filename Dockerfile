# Build: the toolchain matches go.mod's go line.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/topohub ./cmd/topohub \
 && CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/topohub-sim ./cmd/topohub-sim

# Run: a small image that still has wget for the health check.
FROM alpine:3.20
RUN adduser -D -H -u 10001 topohub
COPY --from=build /out/topohub /out/topohub-sim /usr/local/bin/
USER topohub
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/topohub"]
