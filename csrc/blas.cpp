// Finds the Fortran BLAS GEMMs among the libraries this extension was loaded with (libtorch_cpu
// and its dependencies). METAIF_BLAS_SYMBOLS="sgemm,dgemm" names them for a BLAS that mangles
// Fortran names without the trailing underscore.
#include "blas.h"

#include <dlfcn.h>

#include <cstdlib>
#include <string>

namespace metaif::blas {
namespace {

Routines resolve() {
  Routines out;
  std::string names = "sgemm_,dgemm_";
  if (const char* custom = std::getenv("METAIF_BLAS_SYMBOLS")) names = custom;
  const auto comma = names.find(',');
  const std::string single = names.substr(0, comma);
  const std::string dual = comma == std::string::npos ? "" : names.substr(comma + 1);
  // dlsym on our own handle searches this library and everything it depends on.
  Dl_info self{};
  void* handle = nullptr;
  if (dladdr(reinterpret_cast<void*>(&resolve), &self) != 0 && self.dli_fname != nullptr)
    handle = dlopen(self.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
  if (handle == nullptr) handle = RTLD_DEFAULT;
  out.sgemm = reinterpret_cast<SgemmFn>(dlsym(handle, single.c_str()));
  out.dgemm = reinterpret_cast<DgemmFn>(dlsym(handle, dual.c_str()));
  if (out.sgemm == nullptr || out.dgemm == nullptr) {
    static std::string message;
    message = "metaif: the BLAS routines " + single + " and " + dual +
              " are not exported by the loaded libtorch (or its libraries); metaif's CPU kernels call "
              "them directly. Use a torch wheel that bundles MKL or OpenBLAS (the pytorch.org and PyPI "
              "builds do), or name the routines of your BLAS with METAIF_BLAS_SYMBOLS=sgemm,dgemm.";
    out.error = message.c_str();
  }
  return out;
}

}  // namespace

const Routines& routines() {
  static const Routines found = resolve();
  return found;
}

}  // namespace metaif::blas
