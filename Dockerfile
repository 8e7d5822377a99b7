# Prism's binaries in one image; docker-compose.yml runs each as its own container.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins \
 && mkdir /out \
 && find target/release -maxdepth 1 -type f -executable -exec cp {} /out/ \;

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/
COPY config/ /etc/prism/
ENV PRISM_CONFIG=/etc/prism/prism.toml
# The fraud model's offline store (a volume under compose), writable by the service.
RUN mkdir -p /var/lib/prism/fraud && chown nobody /var/lib/prism/fraud
USER nobody
CMD ["prismctl", "doctor"]
