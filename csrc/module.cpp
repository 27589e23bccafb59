// The metaif._C extension module: its import registers every op under torch.ops.metaif
// (python_module.h).
#include "python_module.h"  // first: it includes Python.h

#include "tensor.h"

PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr,
                                   nullptr, nullptr, nullptr, nullptr};
  return metaif::create_module(&module_def);
}

// Schemas of the public ops; implementations are registered next to their kernels
// (csrc/<op>.cpp for CPU, cuda/<op>.cu through csrc for CUDA).
STABLE_TORCH_LIBRARY(metaif, m) {
  m.def("kfe_ihvp(Tensor grads, Tensor q_out, Tensor q_in, Tensor eigvals, float damping) -> Tensor");
  m.def("kfe_ihvp_grouped(Tensor[] grads, Tensor[] q_out, Tensor[] q_in, Tensor[] eigvals, "
        "float damping) -> Tensor[]");
  m.def("kfe_eigvals(Tensor out_grads, Tensor acts, Tensor q_out, Tensor q_in, Tensor? weights) "
        "-> Tensor");
  m.def("ce_head_hvp(Tensor feats, Tensor probs, Tensor vecs, float damping, Tensor? weights) "
        "-> Tensor");
  m.def("ggn_hvp(Tensor jac, Tensor probs, Tensor vecs, float damping, Tensor? weights) -> Tensor");
  m.def("neumann_dense(Tensor a, Tensor b, Tensor? scale, int iters, float damping, float? rtol) "
        "-> Tensor");
  m.def("neumann_ce_head(Tensor feats, Tensor probs, Tensor? weights, Tensor b, Tensor? scale, "
        "int iters, float damping, float? rtol) -> Tensor");
  m.def("cg_dense(Tensor a, Tensor b, float damping, float rtol, int maxiter) "
        "-> (Tensor, Tensor, Tensor)");
  m.def("gather_patch_matmul(Tensor cols, Tensor index, Tensor mask, Tensor weight) -> Tensor");
  m.def("gather_patch_matmul_t(Tensor cols, Tensor index, Tensor mask, Tensor signal) -> Tensor");
  m.def("cg_ce_head(Tensor feats, Tensor probs, Tensor? weights, Tensor b, float damping, "
        "float rtol, int maxiter) -> (Tensor, Tensor, Tensor)");
  m.def("exact_add(Tensor(a!) limbs, Tensor(b!) top, Tensor x, Tensor? rows=None) -> ()");
  m.def("exact_value(Tensor(a!) limbs, Tensor top, Tensor(b!) out) -> ()");
}
