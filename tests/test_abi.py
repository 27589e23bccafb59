"""The compiled modules depend on no torch minor's C++ ABI: every libtorch symbol they import is a C
function of the stable shim (aoti_torch_*, torch_*), never a mangled c10::/at::/torch:: C++ symbol.
This is what lets one wheel load in every torch from 2.10 on (CMakeLists.txt: TORCH_TARGET_VERSION)."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest

# The namespaces of libtorch's C++ API; a demangled import from any of them ties the binary to one minor.
TORCH_CPP = re.compile(r"(^|[^\w:])(c10|at|torch|caffe2|aten)::")


def undefined_symbols(library: Path) -> list[str]:
    done = subprocess.run(["nm", "-D", "--undefined-only", "--demangle", str(library)], capture_output=True,
                          text=True, check=True)
    return [line.split(None, 1)[1] for line in done.stdout.splitlines() if line.strip()]


def torch_cpp_symbols(symbols: list[str]) -> list[str]:
    return [s for s in symbols if TORCH_CPP.search(s)]


@pytest.mark.skipif(shutil.which("nm") is None, reason="needs nm (binutils)")
@pytest.mark.parametrize("module", ["metaif._C", "metaif._emulate"])
def test_the_extension_imports_only_the_stable_c_shim_from_libtorch(module):
    library = Path(importlib.import_module(module).__file__)
    assert library.name.endswith(".abi3.so"), f"{library.name}: not built on the Python limited API"
    symbols = undefined_symbols(library)
    assert any(s.startswith("aoti_torch_") for s in symbols), symbols  # it does use libtorch, through the shim
    assert torch_cpp_symbols(symbols) == [], f"{library.name} imports libtorch C++ symbols"


def test_the_check_recognises_libtorch_cpp_symbols():
    """The filter that the test above relies on flags what the ATen build imported (51 symbols)."""
    before = ["at::_ops::matmul::call(at::Tensor const&, at::Tensor const&)", "c10::detail::torchCheckFail(char const*)",
              "torch::Library::_def(std::variant<c10::OperatorName, c10::FunctionSchema>&&)",
              "at::get_num_threads()"]
    after = ["aoti_torch_get_current_cuda_stream", "torch_call_dispatcher", "std::runtime_error::~runtime_error()",
             "metaif::fail", "__cxa_throw@CXXABI_1.3"]
    assert torch_cpp_symbols(before + after) == before
