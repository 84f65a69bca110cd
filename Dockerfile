# Dockerfile - mockery-server, mockery-acquirer and mockery-demo on Debian 12, built in two
# stages.

FROM debian:bookworm AS build
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake libcivetweb-dev \
      libcjson-dev libpq-dev libssl-dev libcurl4-openssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY CMakeLists.txt ./
COPY cmake cmake
COPY server server
COPY client client
COPY acquirer acquirer
COPY store store
COPY sql sql
RUN cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBUILD_TESTING=OFF -DMOCKERY_WERROR=ON \
 && cmake --build build -j"$(nproc)" --target mockery-server mockery-acquirer mockery-demo

FROM debian:bookworm-slim AS runtime
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends libcivetweb1 libcjson1 libpq5 libssl3 libcurl4 \
      ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --no-create-home --shell /usr/sbin/nologin mockery
COPY --from=build /src/build/mockery-server /src/build/mockery-acquirer /src/build/mockery-demo \
     /usr/local/bin/
USER mockery
ENV PORT=8080
EXPOSE 8080
# The port the server listens on is $PORT (set it, not --port, to move it:
# this check reads the same variable).
HEALTHCHECK --interval=5s --timeout=3s --retries=5 CMD curl -fsS "http://127.0.0.1:${PORT}/health" || exit 1
# SIGTERM drains: requests in flight finish before the server exits.
STOPSIGNAL SIGTERM
ENTRYPOINT ["mockery-server"]
