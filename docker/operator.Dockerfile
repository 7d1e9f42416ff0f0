# syntax=docker/dockerfile:1.6
# The operator image: hetermoe-operator alone, built from source on Debian
# bookworm with the packages of docker/debian-packages.sh (no CUDA), and a
# bookworm-slim runtime with only the binary, the shared libraries it links
# (found with ldd) and the CA certificates. Runs as a non-root user with a
# read-only root filesystem in the chart (charts/hetermoe-operator).
#
#   docker build -f docker/operator.Dockerfile -t hetermoe-operator .
FROM debian:bookworm AS build
COPY docker/debian-packages.sh /tmp/debian-packages.sh
RUN /tmp/debian-packages.sh build
WORKDIR /src
COPY . .
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release -DHETERMOE_NATIVE=OFF \
      -DHETERMOE_BUILD_TESTS=OFF -DHETERMOE_CUDA=OFF \
 && cmake --build /build --target hetermoe-operator
RUN mkdir -p /opt/hetermoe/bin /opt/hetermoe/lib \
 && cp /build/operator/hetermoe-operator /opt/hetermoe/bin/ \
 && ldd /opt/hetermoe/bin/hetermoe-operator | awk '/=> \// {print $3}' | sort -u \
    | grep -vE '/(libc|libm|libdl|librt|libpthread|ld-linux[^/]*)\.so' \
    | xargs -r -I{} cp -L {} /opt/hetermoe/lib/

FROM debian:bookworm-slim AS runtime
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/hetermoe /opt/hetermoe
ENV PATH=/opt/hetermoe/bin:${PATH} \
    LD_LIBRARY_PATH=/opt/hetermoe/lib
USER 65532:65532
ENTRYPOINT ["hetermoe-operator"]
