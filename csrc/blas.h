// Row-major GEMM on raw pointers through the Fortran BLAS that libtorch_cpu exports (MKL on x86
// wheels). Called directly so that thousands of tiny per-task products pay no dispatcher,
// allocation or shape-check overhead. The routines are looked up when the extension is imported
// (blas.cpp), so a torch without them gives a clear ImportError instead of an undefined symbol.
#pragma once

#include "tensor.h"

#include <cstdint>
#include <limits>

namespace metaif::blas {

using SgemmFn = void (*)(const char*, const char*, const int*, const int*, const int*, const float*,
                         const float*, const int*, const float*, const int*, const float*, float*,
                         const int*);
using DgemmFn = void (*)(const char*, const char*, const int*, const int*, const int*, const double*,
                         const double*, const int*, const double*, const int*, const double*, double*,
                         const int*);

struct Routines {
  SgemmFn sgemm = nullptr;
  DgemmFn dgemm = nullptr;
  const char* error = nullptr;  // why they could not be found, or nullptr
};

// Resolved once, on first use (the extension's import checks error()).
const Routines& routines();

inline int to_blas_int(int64_t v) {
  METAIF_CHECK(v <= std::numeric_limits<int>::max(),
               "metaif: a matrix dimension of ", v, " exceeds the 32-bit BLAS interface");
  return static_cast<int>(v);
}

inline void fortran_gemm(const char* ta, const char* tb, const int* m, const int* n, const int* k,
                         const float* alpha, const float* a, const int* lda, const float* b,
                         const int* ldb, const float* beta, float* c, const int* ldc) {
  routines().sgemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

inline void fortran_gemm(const char* ta, const char* tb, const int* m, const int* n, const int* k,
                         const double* alpha, const double* a, const int* lda, const double* b,
                         const int* ldb, const double* beta, double* c, const int* ldc) {
  routines().dgemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

// C[m, n] = alpha * op(A)[m, k] @ op(B)[k, n] + beta * C, all row-major with leading
// dimensions lda, ldb, ldc (elements between rows). op(X) = X^T when trans_x.
template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
          int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands.
  const char ta = trans_a ? 'T' : 'N';
  const char tb = trans_b ? 'T' : 'N';
  const int mi = to_blas_int(n), ni = to_blas_int(m), ki = to_blas_int(k);
  const int ldai = to_blas_int(lda < 1 ? 1 : lda), ldbi = to_blas_int(ldb < 1 ? 1 : ldb);
  const int ldci = to_blas_int(ldc < 1 ? 1 : ldc);
  fortran_gemm(&tb, &ta, &mi, &ni, &ki, &alpha, b, &ldbi, a, &ldai, &beta, c, &ldci);
}

// A read-only 2-D operand as BLAS sees it: row-major data with leading dimension ld, used
// transposed when trans. Column-major matrices (what torch.linalg.eigh and qr return) are taken
// as transposed row-major views instead of being copied.
template <typename T>
struct Operand {
  const T* data;
  int64_t ld;
  bool trans;
};

}  // namespace metaif::blas
