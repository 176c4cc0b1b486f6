# syntax=docker/dockerfile:1
#
# tollgate container image.
#
#   docker build -t tollgate .
#   docker run --rm -p 8080:8080 tollgate
#
# The default command serves config/quickstart.yaml (copied to /etc/tollgate/).
# Inside a container the gateway must listen on 0.0.0.0, not 127.0.0.1, or nothing outside
# the container can reach it: quickstart.yaml listens on 0.0.0.0:8080. Its admin listener
# stays on 127.0.0.1:9090 (reachable only from inside the container); to publish /metrics
# and the admin API, mount your own config with `admin.listen: "0.0.0.0:9090"` and an
# `admin.token`, e.g.
#   docker run -p 8080:8080 -p 9090:9090 -v "$PWD/my.yaml:/etc/tollgate/my.yaml:ro" \
#     -e TOLLGATE_ADMIN_TOKEN=... tollgate serve --config /etc/tollgate/my.yaml

############################ build ############################
FROM rust:1-bookworm AS build

# pingora-core builds zlib-ng, which needs cmake.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

RUN cargo build --release --locked --bin tollgate

# Refuse to produce an image whose shipped configs do not validate.
# (example.yaml reads the admin token from the environment; any value will do here.)
RUN set -e; \
    for f in config/*.yaml; do \
      echo "--- tollgate check ${f}"; \
      TOLLGATE_ADMIN_TOKEN=image-build-check target/release/tollgate check --config "$f"; \
    done

########################### runtime ###########################
FROM debian:bookworm-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 tollgate \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/tollgate \
      --no-create-home --shell /usr/sbin/nologin tollgate \
 && mkdir -p /etc/tollgate /var/lib/tollgate \
 && chown tollgate:tollgate /var/lib/tollgate

COPY --from=build /src/target/release/tollgate /usr/local/bin/tollgate
COPY --from=build /src/config/ /etc/tollgate/

# The embedded store keeps its counters under /var/lib/tollgate: quickstart.yaml reads
# store.path as "${TOLLGATE_DATA:-./data}/usage.db", and a relative store.path is taken from the
# working directory. Mount a volume here to keep usage counters across container restarts.
WORKDIR /var/lib/tollgate
ENV TOLLGATE_DATA=/var/lib/tollgate
VOLUME ["/var/lib/tollgate"]

USER 10001:10001

# 8080: the gateway (server.listen); 9090: admin, /metrics, /healthz (admin.listen)
EXPOSE 8080 9090

# SIGTERM (docker stop) lets in-flight calls finish for server.grace_period (default 5s);
# give `docker stop -t` at least that much.
STOPSIGNAL SIGTERM

ENTRYPOINT ["tollgate"]
CMD ["serve", "--config", "/etc/tollgate/quickstart.yaml"]
