#!/usr/bin/env bash
# Compile-checks the CUDA side without a GPU: every cuda/*.cu with nvcc for sm_80 and sm_90
# (warnings are errors), and the torch-facing CUDA registrations in csrc/ (METAIF_WITH_CUDA) with
# the host compiler against the installed torch's stable-ABI headers, with the definitions
# CMakeLists.txt gives them (USE_CUDA, TORCH_TARGET_VERSION, Py_LIMITED_API). Needs nvcc (and the
# CUDA runtime headers next to it); exits 0 with a note when absent.
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
target_version=$(sed -n 's/^set(METAIF_TORCH_TARGET_VERSION \(0x[0-9a-f]*\))$/\1/p' CMakeLists.txt)
mapfile -t torch_includes < <("$python" -c "import torch.utils.cpp_extension as c; print('\n'.join(c.include_paths()))")
python_include=$("$python" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
flags=(-std=c++17 -fsyntax-only -Wall -Wextra -Wno-unused-parameter -Wno-psabi -Wno-c++20-extensions -fopenmp-simd -fvisibility=hidden -fvisibility-inlines-hidden
       -Werror -DMETAIF_WITH_CUDA -DUSE_CUDA "-DTORCH_TARGET_VERSION=$target_version" -DPy_LIMITED_API=0x030A0000
       -Iinclude "${torch_includes[@]/#/-isystem}" "-isystem$python_include" "-I$cuda_include")
for src in csrc/*.cpp; do
  echo "c++ (METAIF_WITH_CUDA): $src"
  "${CXX:-c++}" "${flags[@]}" "$src"
done
