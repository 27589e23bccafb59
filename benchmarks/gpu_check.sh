#!/usr/bin/env bash
# The GPU check of issue 13 in one command, on a machine with a GPU, nvcc and a CUDA-enabled torch:
#
#     benchmarks/gpu_check.sh [RESULTS.json] [OMNIGLOT_FOLDER]
#
# 0. when METAIF_WHEEL names a wheel built elsewhere (build_tools/build_wheel.sh, against another
#    torch), installs it without rebuilding into a venv that sees this machine's torch and runs every
#    op against metaif.reference (tests/wheel_smoke.py): the stable ABI's promise, checked;
# 1. builds metaif against that machine's own torch, with its CUDA kernels;
# 2. runs the CUDA tests (tests/test_cuda.py) and the CPU emulation of the kernels' code;
# 3. benchmarks every kernel against the PyTorch composition with CUDA events, and the exact total
#    HVP of the 200-task Omniglot Conv-4 pipeline when OMNIGLOT_FOLDER is given
#    (metaif bench --device cuda --only gpu).
# Everything goes into one JSON file (default gpu-check.json), the logs beside it. Each step has
# its own time limit; the whole stays under 8 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
results=$(realpath -m "${1:-gpu-check.json}")
root=${2:-}
python=${PYTHON:-python3}
logs=$(dirname "$results")
mkdir -p "$logs"
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $logs/NAME.log, record rc and seconds
  local name=$1 limit=$2
  shift 2
  local began=$SECONDS
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$@" >"$logs/$name.log" 2>&1
  local rc=$?
  echo "$name $rc $((SECONDS - began))" >>"$logs/steps.txt"
  tail -n 25 "$logs/$name.log"
  return $rc
}

rm -f "$logs/steps.txt"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; nvcc --version | tail -n 2;
  "$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
} >"$logs/environment.log" 2>&1
cat "$logs/environment.log"

if [ -n "${METAIF_WHEEL:-}" ]; then
  venv=$(mktemp -d)/venv
  "$python" -m venv --system-site-packages "$venv"
  step prebuilt_wheel 120 bash -c "'$venv/bin/python' -m pip install -q --no-deps '$METAIF_WHEEL' && cd /tmp &&
    '$venv/bin/python' '$PWD/tests/wheel_smoke.py'"
fi

if step build 300 "$python" -m pip install --no-build-isolation --no-deps -v -e .; then
  step tests 150 "$python" -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/ops/test_emulation.py \
    tests/test_device_placement.py
  bench_args=(--device cuda --only gpu --json "$logs/bench.json")
  [ -n "$root" ] && bench_args+=(--root "$root")
  step bench 240 "$python" -m metaif bench "${bench_args[@]}"
fi

"$python" - "$results" "$logs" <<'PY'
import json, pathlib, sys
results, logs = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
def text(name, lines=40):
    path = logs / name
    return path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else None
steps = {}
if (logs / "steps.txt").exists():
    for line in (logs / "steps.txt").read_text().split("\n"):
        if line.strip():
            name, rc, seconds = line.split()
            steps[name] = {"exit_code": int(rc), "seconds": int(seconds), "log_tail": text(f"{name}.log")}
bench = json.loads((logs / "bench.json").read_text()) if (logs / "bench.json").exists() else None
results.write_text(json.dumps({"environment": text("environment.log"), "steps": steps, "bench": bench}, indent=1))
print(f"wrote {results}")
PY
