#!/usr/bin/env bash
# Compile-checks the CUDA side without a GPU: every cuda/*.cu with nvcc for sm_80 and sm_90
# (warnings are errors), and the torch-facing CUDA registrations in csrc/ (METAIF_WITH_CUDA) with
# the host compiler against the installed torch's headers. A CPU-only torch wheel ships the c10/cuda
# headers but not the one CMake generates (cuda_cmake_macros.h): a stand-in is written for the
# check. Needs nvcc (and the CUDA runtime headers next to it); exits 0 with a note when absent.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}

if ! command -v nvcc >/dev/null 2>&1; then
  echo "check_cuda: nvcc not found, CUDA sources not checked"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

shopt -s nullglob
for src in cuda/*.cu; do
  echo "nvcc: $src"
  nvcc -std=c++17 -O3 -Werror all-warnings -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
    -Iinclude -c "$src" -o "$work/$(basename "$src").o"
done

cuda_include=$(dirname "$(dirname "$(command -v nvcc)")")/include
[ -f "$cuda_include/cuda_runtime_api.h" ] || cuda_include=/usr/local/cuda/include
mkdir -p "$work/shim/c10/cuda/impl"
printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' > "$work/shim/c10/cuda/impl/cuda_cmake_macros.h"
mapfile -t torch_includes < <("$python" -c "import torch.utils.cpp_extension as c; print('\n'.join(c.include_paths()))")
python_include=$("$python" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
flags=(-std=c++17 -fsyntax-only -Wall -Wextra -Wno-unused-parameter -Wno-psabi -Wno-c++20-extensions -fopenmp-simd
       -Werror -DMETAIF_WITH_CUDA -Iinclude "${torch_includes[@]/#/-isystem}" "-isystem$python_include" "-I$work/shim"
       "-I$cuda_include")
for src in csrc/*.cpp; do
  echo "c++ (METAIF_WITH_CUDA): $src"
  "${CXX:-c++}" "${flags[@]}" "$src"
done
