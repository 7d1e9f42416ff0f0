#!/bin/sh
# On a machine with NVIDIA GPUs (driver, CUDA toolkit and NCCL installed):
# builds for the GPUs present, then runs what no CI machine can:
#   1. ctest -L gpu                 every kernel, the CUDA backend's step and
#                                   NCCL (threads and processes) on real GPUs
#   2. bench/kernels/kernel_bench   each kernel's achieved TFLOP/s and GB/s
#                                   against the device's peak
#   3. bench/bench_zebra.py --device cuda
#                                   zebra / sequential / EP / Asym-EA on two
#                                   GPUs, rows over NCCL vs through the host
#
#   bench/run_gpu.sh [BUILD_DIR]    (default build-gpu)
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-build-gpu}
command -v nvidia-smi >/dev/null || { echo "run_gpu.sh: no nvidia-smi: this needs a machine with NVIDIA GPUs" >&2; exit 1; }
nvidia-smi -L
gpus=$(nvidia-smi -L | wc -l)
PATH=/usr/local/cuda/bin:$PATH
cmake -S "$here" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=native
cmake --build "$build"
echo "== ctest -L gpu"
(cd "$build" && ctest -L gpu --output-on-failure)
echo "== kernel bench"
"$build/bench/kernels/kernel_bench"
if [ "$gpus" -ge 2 ]; then
  echo "== zebra bench on two GPUs"
  /usr/bin/python3 "$here/bench/bench_zebra.py" --trainer "$build/trainer/hetermoe-trainer" --device cuda
else
  echo "== zebra bench skipped: it needs 2 GPUs, this machine has $gpus"
fi
