# syntax=docker/dockerfile:1.6
# The trainer image: hetermoe-trainer (and hetermoe-plan) with the CUDA
# backend compiled for every GPU generation the trainer's pods run on:
# Volta sm_70, Turing sm_75, Ampere sm_80/86, Ada sm_89, Hopper sm_90.
#
# CUDA 12 (not 13): CUDA 13 dropped sm_70. The build stage is Debian
# bookworm, like the developers' machines and CI, with the packages of
# docker/debian-packages.sh plus NVIDIA's CUDA 12 repository for debian12.
# The runtime stage is bookworm-slim with only the binaries and the shared
# libraries they link (found with ldd); the GPU driver (libcuda) comes from
# the node through the NVIDIA container toolkit. Runs as a non-root user.
#
# The tiny example (examples/tiny: config, run file and its token file, made
# from the image's own /usr/share/common-licenses) ships under
# /opt/hetermoe/examples/tiny, which examples/hetermoejob-cpu.yaml reads.
#
#   docker build -f docker/trainer.Dockerfile -t hetermoe-trainer .
#   docker run --gpus all -v "$PWD:/work" hetermoe-trainer --config run.yaml
ARG CUDA_PKG_VERSION=12-8
ARG CUDA_ARCHITECTURES="70;75;80;86;89;90"

FROM debian:bookworm AS build
ARG CUDA_PKG_VERSION
ARG CUDA_ARCHITECTURES
COPY docker/debian-packages.sh /tmp/debian-packages.sh
RUN /tmp/debian-packages.sh build
ADD https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/cuda-keyring_1.1-1_all.deb /tmp/cuda-keyring.deb
RUN dpkg -i /tmp/cuda-keyring.deb \
 && apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      cuda-minimal-build-${CUDA_PKG_VERSION} libcublas-dev-${CUDA_PKG_VERSION} libnccl-dev libnccl2 \
 && rm -rf /var/lib/apt/lists/*
ENV PATH=/usr/local/cuda/bin:${PATH}
WORKDIR /src
COPY . .
# Portable CPU code (no -march=native), no tests; CUDA required.
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release -DHETERMOE_NATIVE=OFF \
      -DHETERMOE_BUILD_TESTS=OFF -DHETERMOE_CUDA=ON \
      -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHITECTURES}" \
 && cmake --build /build --target hetermoe-trainer hetermoe-plan hetermoe_cuda_plugin hetermoe_tokenizer_plugin
# Binaries, the CUDA backend and SentencePiece plugins (dlopen'ed from
# ../lib), and every shared library they load, except the C runtime and the
# driver, into /opt/hetermoe.
RUN mkdir -p /opt/hetermoe/bin /opt/hetermoe/lib \
 && cp /build/trainer/hetermoe-trainer /build/planner/hetermoe-plan /opt/hetermoe/bin/ \
 && cp /build/trainer/libhetermoe_cuda_plugin.so /build/trainer/libhetermoe_tokenizer.so /opt/hetermoe/lib/ \
 && for b in /opt/hetermoe/bin/* /opt/hetermoe/lib/libhetermoe_*.so; do ldd "$b"; done \
    | awk '/=> \// {print $3}' | sort -u \
    | grep -vE '/(libc|libm|libdl|librt|libpthread|ld-linux[^/]*|libcuda)\.so' \
    | xargs -r -I{} cp -L {} /opt/hetermoe/lib/
RUN mkdir -p /opt/hetermoe/examples/tiny \
 && cp examples/tiny/config.json examples/tiny/run.yaml /opt/hetermoe/examples/tiny/ \
 && examples/tiny/make-tokens.sh /build/trainer/hetermoe-trainer /opt/hetermoe/examples/tiny/tokens.bin

FROM debian:bookworm-slim AS runtime
COPY --from=build /opt/hetermoe /opt/hetermoe
ENV PATH=/opt/hetermoe/bin:${PATH} \
    LD_LIBRARY_PATH=/opt/hetermoe/lib \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
RUN useradd --system --uid 10001 --home-dir /work --create-home hetermoe
USER 10001:10001
WORKDIR /work
ENTRYPOINT ["hetermoe-trainer"]
CMD ["--help"]
