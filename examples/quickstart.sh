#!/bin/sh
# The README's main job, from a fresh Debian bookworm machine: install the
# build dependencies, build hetermoe-trainer, turn real English text (the
# licences every Debian system ships in /usr/share/common-licenses) into
# tokens with a SentencePiece tokenizer trained on it, and train the small MoE
# of examples/tiny/ on them.
# Shows a progress bar, the falling loss and tokens/s; leaves checkpoints in
# out/tiny/ (checkpoint-100/, final/) and the per-step metrics in
# out/tiny/metrics.jsonl.
set -eu
cd "$(dirname "$0")/.."

docker/debian-packages.sh build
# The trainer alone: no operator (cpprestsdk) and no test suites to configure;
# the CUDA kernels only where a GPU can run them (the run below is on the CPU).
CUDA=OFF
if nvidia-smi -L >/dev/null 2>&1; then CUDA=AUTO; fi
cmake -S . -B build-trainer -G Ninja -DCMAKE_BUILD_TYPE=Release -DHETERMOE_CUDA=$CUDA \
  -DHETERMOE_BUILD_OPERATOR=OFF -DHETERMOE_BUILD_TESTS=OFF >/dev/null
ninja -C build-trainer hetermoe-trainer

examples/tiny/make-tokens.sh build-trainer/trainer/hetermoe-trainer examples/tiny/tokens.bin
build-trainer/trainer/hetermoe-trainer --config examples/tiny/run.yaml "$@"
