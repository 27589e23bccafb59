"""The losses' logit Hessians and their closed-form roots."""

import torch

from metaif.curvature import LinearHeadCurvature, get_loss


def test_hessian_roots_factor_the_hessians_and_give_the_eigh_factor():
    gen = torch.Generator().manual_seed(3)
    for name, k in (("softmax", 4), ("squared", 3), ("binary", 1)):
        loss = get_loss(name)
        logits = torch.randn(2, 6, k, generator=gen, dtype=torch.float64)
        root = loss.hessian_root(logits)
        torch.testing.assert_close(root @ root.mT, loss.hessian(logits))
        phi, w = torch.randn(2, 6, 5, generator=gen, dtype=torch.float64), torch.rand(2, 6, generator=gen,
                                                                                       dtype=torch.float64)
        closed = LinearHeadCurvature(loss.hessian(logits), phi, w, 0.1, logit_root=root).factor()
        by_eigh = LinearHeadCurvature(loss.hessian(logits), phi, w, 0.1).factor()
        torch.testing.assert_close(closed @ closed.mT, by_eigh @ by_eigh.mT)
