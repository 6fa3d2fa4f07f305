# regmirror as a drop-in for the registry:2 image: config at /etc/docker/registry/config.yml
# (distribution 3's /etc/distribution/config.yml when one is mounted there), data in
# /var/lib/registry, port 5000, REGISTRY_* overrides. Without a mounted config it is a Docker
# Hub mirror (conf/config.yml). `make image` builds it without pulling anything.
#   docker run -d -p 5000:5000 --restart=always -v /data/registry:/var/lib/registry regmirror
#   docker run --rm -v /data/registry:/var/lib/registry regmirror garbage-collect --dry-run
ARG BASE=debian:bookworm-slim

FROM ${BASE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential pkg-config libevent-dev \
      libhttp-parser-dev libcurl4-openssl-dev libssl-dev libyaml-dev libhiredis-dev \
      libjansson-dev libcrypt-dev libpsl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Makefile ./
COPY common common
COPY mirror mirror
ARG VERSION=dev
RUN make -j"$(nproc)" release VERSION="$VERSION" && strip build/release/regmirror

FROM ${BASE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends libevent-2.1-7 libevent-openssl-2.1-7 \
      libevent-pthreads-2.1-7 libcurl4 libyaml-0-2 libhiredis0.14 libjansson4 libssl3 \
      libpsl5 publicsuffix libhttp-parser2.9 ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 regmirror \
 && useradd --system --uid 10001 --gid regmirror --home-dir /var/lib/registry \
      --shell /usr/sbin/nologin regmirror \
 && mkdir -p /etc/docker/registry /var/lib/registry \
 && chown regmirror:regmirror /var/lib/registry
COPY --from=build /src/build/release/regmirror /usr/bin/regmirror
COPY scripts/docker-entrypoint.sh /usr/local/bin/docker-entrypoint
COPY scripts/docker-healthcheck.sh /usr/local/bin/docker-healthcheck
COPY conf/config.yml /etc/docker/registry/config.yml
RUN sed -i 's|^    rootdirectory: ./data$|    rootdirectory: /var/lib/registry|' \
      /etc/docker/registry/config.yml \
 && grep -q 'rootdirectory: /var/lib/registry$' /etc/docker/registry/config.yml \
 && regmirror check-config /etc/docker/registry/config.yml >/dev/null
VOLUME ["/var/lib/registry"]
EXPOSE 5000
HEALTHCHECK --interval=30s --timeout=5s --start-period=5s --retries=3 CMD ["docker-healthcheck"]
ENTRYPOINT ["docker-entrypoint"]
CMD ["serve"]
