#!/usr/bin/env bash
# Builds the wheel users install: metaif-<version>-cp310-abi3-manylinux_<glibc>_x86_64.whl in OUT
# (default dist/). pip builds it against the torch already installed (no build isolation), then
# auditwheel checks every external symbol and retags it with the manylinux policy this machine's
# toolchain allows. libtorch's and CUDA's libraries are never grafted into the wheel: the torch wheel
# the user has provides them (the extension calls only their stable C shim).
#
#     build_tools/build_wheel.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-dist}")
python=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$python" -m pip wheel -q --no-build-isolation --no-deps -w "$work" .
"$python" -m auditwheel repair -w "$out" \
  --exclude 'libtorch*.so' --exclude 'libc10*.so' --exclude 'libcudart.so*' "$work"/metaif-*.whl
"$python" -m auditwheel show "$out"/metaif-*manylinux*.whl
