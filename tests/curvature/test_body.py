"""Hand-written body passes against torch.func (float64), and through the influence analyzer."""

import warnings

import pytest
import torch
from torch import nn
from torch.func import grad, jvp

from metaif.curvature import (
    AutogradPasses,
    ImageBody,
    TracedPasses,
    body_passes,
    passes_for,
    traced_unsupported,
)
from metaif.curvature.images import inputs_per_pass
from metaif.influence import InfluenceAnalyzer, InfluenceConfig, SolverConfig
from metaif.linalg import MetaifWarning
from metaif.meta import AnilConfig, AnilProblem
from metaif.models import FlatModel, conv4, mlp, resnet12
from metaif.utils.memory import available_bytes
from tests.helpers import make_taskset


def small_conv(pool_first: bool = False) -> FlatModel:
    """Both orders of ReLU and pool, a pool of its own, a bias-free conv and a linear layer."""
    act = [nn.MaxPool2d(2), nn.ReLU()] if pool_first else [nn.ReLU(), nn.MaxPool2d(2)]
    module = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), *act, nn.Conv2d(3, 4, 3, padding=1, bias=False),
                           nn.MaxPool2d(2, stride=1), nn.Softplus(beta=2.0), nn.Flatten(), nn.Linear(36, 5), nn.Tanh())
    return FlatModel(module, 5)


class _Residual(nn.Module):
    """Every registered step beyond the Sequential ones: batch norms (affine and not) with trained
    statistics, a residual sum, LeakyReLU, Tanh in a branch, average pools, eval-mode dropout, identity."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3), nn.LeakyReLU(0.1))
        self.branch = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3, affine=False), nn.Tanh())
        self.skip = nn.Identity()
        self.pool = nn.Sequential(nn.AvgPool2d(2), nn.Dropout(0.5), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.head = nn.Linear(12, 4)

    def forward(self, x):
        h = self.stem(x)
        return self.head(self.pool(torch.add(self.branch(h), self.skip(h))))


def residual_body() -> FlatModel:
    module = _Residual().eval()
    gen = torch.Generator().manual_seed(5)
    for norm in (module.stem[1], module.branch[1]):  # trained statistics, not the identity
        norm.running_mean.copy_(torch.randn(3, generator=gen))
        norm.running_var.copy_(torch.rand(3, generator=gen) + 0.5)
    return FlatModel(module, 4)


BODIES = {
    "resnet12": (lambda: resnet12(1, (2, 3, 3, 4), 16), (1, 16, 16)),
    "residual-mixed": (residual_body, (2, 8, 8)),
    "conv4": (lambda: conv4(channels=4, image_size=16), (1, 16, 16)),
    "conv4-rgb": (lambda: conv4(in_channels=3, channels=4, image_size=16), (3, 16, 16)),
    "mixed-conv": (small_conv, (1, 8, 8)),
    "pool-then-relu": (lambda: small_conv(pool_first=True), (1, 8, 8)),
    "mlp-tanh": (lambda: mlp(12, (7, 5), "tanh"), (12,)),
    "mlp-softplus": (lambda: mlp(12, (7, 5), "softplus"), (12,)),
    "mlp-relu": (lambda: mlp(12, (7, 5), "relu"), (12,)),
}


def close(actual, expected):
    """Float64 agreement to 1e-10 (rounding, not approximation)."""
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)


def randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def check_passes(passes, body, shape):
    """Features, tangents, first- and second-order pulls against torch.func, float64."""
    lam, x = body.init(0, torch.float64), randn(6, *shape, seed=1)
    g, m, v = randn(6, body.out_features, seed=2), randn(6, body.out_features, seed=3), randn(lam.numel(), seed=4)
    p = passes(body, lam, x)
    p.cotangent(g)
    close(p.phi, body(lam, x))
    close(p.tangent(v), jvp(lambda la: body(la, x), (lam,), (v,))[1])
    expected = grad(lambda la: (m * body(la, x)).sum() + (g * jvp(lambda l2: body(l2, x), (la,), (v,))[1]).sum())(lam)
    close(p.pull(m, v), expected)
    close(p.pull(m), grad(lambda la: (m * body(la, x)).sum())(lam))
    # a new direction without an explicit tangent call
    v2 = randn(lam.numel(), seed=5)
    expected2 = grad(lambda la: (g * jvp(lambda l2: body(l2, x), (la,), (v2,))[1]).sum())(lam)
    close(p.pull(torch.zeros_like(m), v2), expected2)
    # a direction changed in place after its tangent: the pull must not reuse stale tangents
    p.tangent(v2)
    v2.mul_(2.0)
    close(p.pull(torch.zeros_like(m), v2), 2.0 * expected2)
    # the tangent before g (the first product of a solve), and a second pull along the same v: the
    # same bits as with g first
    late = passes(body, lam, x)
    late.tangent(v)
    late.cotangent(g)
    first = p.pull(m, v)
    assert torch.equal(late.pull(m, v), first) and torch.equal(late.pull(m, v), first)
    return p


@pytest.mark.parametrize("name", sorted(BODIES))
@pytest.mark.parametrize("passes", [TracedPasses, AutogradPasses])
def test_passes_match_torch_func(name, passes):
    make, shape = BODIES[name]
    check_passes(passes, make(), shape)


def _steps(passes: TracedPasses) -> list[str]:
    return [type(node.step).__name__ for node in passes.nodes[1:]]


def test_fusions_replace_the_chains_they_match(monkeypatch):
    """Conv-4: the first convolution, ReLU and pool through the patch kernels, the later ReLU-pools
    commuted; without kernels for the device, the first convolution on its im2col. ResNet-12: both
    convolutions of the images on their im2col, every LeakyReLU-pool commuted."""
    make, shape = BODIES["conv4"]
    fused = ["PooledPatchesStep"] + ["AffineStep", "ActivationPoolStep"] * 3 + ["FlattenStep"]
    assert _steps(check_passes(TracedPasses, make(), shape)) == fused
    monkeypatch.setattr("metaif.curvature.fused.has_kernels", lambda device: False)
    plain = ["ImageConvStep", "ActivationPoolStep"] + fused[1:]
    assert _steps(check_passes(TracedPasses, make(), shape)) == plain
    make, shape = BODIES["resnet12"]
    steps = _steps(TracedPasses(make(), make().init(0, torch.float64), randn(2, *shape, seed=0)))
    assert steps.count("ImageConvStep") == 2 and steps.count("ActivationPoolStep") == 4
    assert steps.count("AffineStep") == 14 and "MaxPoolStep" not in steps


def test_unsupported_bodies_fall_back_and_bad_requests_are_named():
    body = FlatModel(nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.GELU()), 3)
    lam = body.init(0, torch.float64)
    assert passes_for(body) == ("autograd", "GELU at 2 (call_module)")
    with pytest.warns(MetaifWarning, match=r"GELU at 2 \(call_module\) has no registered step.*autograd"):
        assert isinstance(body_passes(body, lam, randn(2, 4, seed=0)), AutogradPasses)
    with pytest.raises(ValueError, match="AutogradPasses"):
        body_passes(body, lam, randn(2, 4, seed=0), "traced")
    with pytest.raises(ValueError, match="body passes must be 'auto' or one of"):
        body_passes(body, lam, randn(2, 4, seed=0), "fast")
    p = TracedPasses(mlp(4, (3,), "tanh"), mlp(4, (3,), "tanh").init(0, torch.float64), randn(2, 4, seed=0))
    with pytest.raises(RuntimeError, match="cotangent"):
        p.pull(randn(2, 3, seed=1), randn(p.num_params, seed=2))


def test_analyzer_products_agree_across_body_passes():
    small_tasks = make_taskset(3)
    problem = AnilProblem(small_conv(), AnilConfig(ways=3, delta=0.3, gamma=1e-3))
    lam = problem.init_lambda(0, torch.float64)
    fast, slow = (InfluenceAnalyzer(problem, lam, small_tasks, config=InfluenceConfig(body_passes=p, image_chunk=5))
                  for p in ("traced", "autograd"))
    assert isinstance(fast.binding.body.kept[0], TracedPasses)
    assert isinstance(slow.binding.body.kept[0], AutogradPasses)
    for seed in (0, 1):  # the second product reuses the kept cotangent state
        v = randn(lam.numel(), seed=seed)
        for variant in ("exact", "gn", "direct"):
            torch.testing.assert_close(fast.hvp(v, variant), slow.hvp(v, variant))
    torch.testing.assert_close(fast.task_gradients(), slow.task_gradients())
    torch.testing.assert_close(fast.gradient(fast.c), slow.gradient(slow.c))


@pytest.mark.parametrize("passes", ["traced", "autograd"])
def test_a_memory_budget_recomputes_chunks_to_the_same_bits(passes):
    """No budget, a budget that keeps some chunks and none at all: the same features, products,
    gradients and scores, bit for bit; the diagnostics say what was kept."""
    tasks, test = make_taskset(4), make_taskset(2, seed=9)
    problem = AnilProblem(small_conv(), AnilConfig(ways=3, delta=0.3, gamma=1e-3))
    lam = problem.init_lambda(0, torch.float64)
    settings = dict(body_passes=passes, image_chunk=8, solver=SolverConfig(damping=5.0))  # PD at this lambda
    whole = InfluenceAnalyzer(problem, lam, tasks, config=InfluenceConfig(**settings))
    chunks = len(whole.binding.body.chunks)
    per_chunk = whole.binding.body.kept[0].kept_bytes()
    some = 2.5 * per_chunk / 2 ** 30  # two or three chunks' forward state, fewer once g's signal is kept
    results = []
    for memory_gb in (None, some, 0.0):
        analyzer = InfluenceAnalyzer(problem, lam, tasks, config=InfluenceConfig(**settings, memory_gb=memory_gb))
        v = randn(lam.numel(), seed=0)
        results.append([analyzer.binding.phi, analyzer.hvp(v), analyzer.hvp(2 * v), analyzer.gradient(analyzer.c),
                        analyzer.task_gradients([0, 3]), analyzer.scores(test).tasks])
        report = analyzer.diagnostics["body_memory"]
        assert report["kept_chunks"] + report["recomputed_chunks"] == chunks
        if memory_gb is None:  # the default: half the memory available now, far more than this needs
            assert report["recomputed_chunks"] == 0 and 0 < report["budget_mb"] < available_bytes() / 2 ** 20
        elif memory_gb == 0.0:
            assert report["kept_chunks"] == 0 and report["kept_mb"] == 0
        else:
            assert 0 < report["kept_chunks"] < chunks and report["kept_mb"] <= report["budget_mb"]
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_larger_images_take_fewer_per_pass():
    """A pass reads at most chunk x 784 input values: 28x28 gray and smaller images keep the chunk."""
    assert [inputs_per_pass(256, n) for n in (8 * 8, 28 * 28, 3 * 84 * 84, 10 ** 9)] == [256, 256, 9, 1]
    assert inputs_per_pass(8, 3 * 16 * 16) == 8 * 784 // 768
    problem = AnilProblem(resnet12(3, (2, 3, 4, 5), 32), AnilConfig(ways=3))
    images = torch.randn(70, 3, 32, 32)
    body = ImageBody(problem.body, problem.init_lambda(0), images, chunk=64, memory=0.0)
    assert [s.stop - s.start for s in body.chunks] == [16, 16, 16, 16, 6]  # 64 x 784 // 3,072 values


def test_features_run_the_body_a_pass_at_a_time():
    """Evaluation's forward (ANIL's predict): at most ``inputs_per_pass`` images per call of the body,
    8-bit codes decoded a chunk at a time, and the features of one call over every image (float64)."""
    from metaif.curvature import features
    from metaif.data import decode_pixels, encode_pixels

    body = conv4(3, 4, 32)
    lam = body.init(0, torch.float64)
    codes = encode_pixels(torch.rand(42, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    calls = []

    class Recorded:
        out_features = body.out_features

        def __call__(self, flat, x):
            calls.append((len(x), x.dtype))
            return body(flat, x)

    phi = features(Recorded(), lam, codes, chunk=16)
    assert calls == [(4, torch.float64)] * 10 + [(2, torch.float64)]  # 16 x 784 // 3,072 values per pass
    whole = body(lam, decode_pixels(codes, torch.float64))
    torch.testing.assert_close(phi, whole, rtol=1e-12, atol=1e-12)
    assert features(body, lam, codes[:0]).shape == (0, body.out_features)


def test_resnet12_is_the_few_shot_backbone_with_frozen_norms():
    body = resnet12(3, (2, 3, 4, 5), 16)
    convs = [m for m in body.module.modules() if isinstance(m, nn.Conv2d)]
    assert [m.kernel_size for m in convs[:4]] == [(3, 3)] * 3 + [(1, 1)] and len(convs) == 16
    assert sum(isinstance(m, nn.LeakyReLU) and m.negative_slope == 0.1 for m in body.module.modules()) == 12
    assert body.out_features == 5 and body(body.init(0), torch.rand(2, 3, 16, 16)).shape == (2, 5)
    norms = body.unflatten(body.init(0))
    assert all(bool((norms[n] == (0.0 if n.endswith("bias") else 1.0)).all()) for n in body.norm_params)
    assert len(body.norm_params) == 2 * 16  # a scale and a shift per convolution
    assert resnet12().num_params == 12_424_320  # 64-160-320-640 on RGB
    trained = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    with pytest.raises(ValueError, match=r"batch norm in train mode \(1\).*call .eval\(\)"):
        FlatModel(trained, 2)
    with pytest.raises(ValueError, match="at least 16x16"):
        resnet12(1, (2, 2, 2, 2), 8)


def test_resnet12_passes_and_total_hessian_products_match_references():
    """A residual body with batch norms: traced passes (chosen by "auto", no warning), and the
    analyzer's unique-image path against its per-task (seam) path, float64."""
    body = resnet12(1, (2, 3, 3, 4), 16)
    assert passes_for(body) == ("traced", None)
    lam, v = body.init(0, torch.float64), randn(body.num_params, seed=2)
    tasks = make_taskset(3)
    tasks = type(tasks)(**{**tasks.__dict__, "images": torch.nn.functional.interpolate(tasks.images, size=16)})
    problem = AnilProblem(body, AnilConfig(ways=3, delta=0.3, gamma=1e-3, inner_tol=1e-12))
    with warnings.catch_warnings():
        warnings.simplefilter("error", MetaifWarning)
        fast = InfluenceAnalyzer(problem, lam, tasks, config=InfluenceConfig(path="auto"))
    seam = InfluenceAnalyzer(problem, lam, tasks, config=InfluenceConfig(path="seam"))
    assert isinstance(fast.binding.body.kept[0], TracedPasses)
    for variant in ("exact", "gn"):
        close(fast.hvp(v, variant), seam.hvp(v, variant))
    close(fast.task_gradients(), seam.task_gradients())  # with the products: every IF


def test_bad_bodies_and_inputs_are_named_before_any_long_work():
    tasks = make_taskset(3)  # 8x8 digits
    too_small = AnilProblem(conv4(1, 4, 28), AnilConfig(ways=3))
    with pytest.raises(ValueError, match=r"cannot take inputs of shape \(1, 8, 8\).*size it was built for"):
        InfluenceAnalyzer(too_small, too_small.init_lambda(0), tasks)
    not_flat = AnilProblem(FlatModel(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()), 5), AnilConfig(ways=3))
    with pytest.raises(ValueError, match=r"maps an input of shape \(1, 8, 8\) to \(2, 6, 6\), not to \[5\]"):
        InfluenceAnalyzer(not_flat, not_flat.init_lambda(0), tasks)
    dropout = FlatModel(nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(64, 3)), 3)
    assert traced_unsupported(dropout) == "Dropout at 1: dropout in train mode (random)"
    assert passes_for(dropout)[0] == "autograd"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pixel_codes_give_the_bits_of_their_decoded_images(dtype):
    """A task set of 8-bit codes and the same set decoded to floats: the same features, products,
    gradients, scores and predictions, bit for bit, kept or recomputed, in both dtypes and all forms."""
    from dataclasses import replace

    from metaif.data import decode_pixels, encode_pixels
    from metaif.meta import TaskBatch
    from metaif.meta.binding import meta_gradient
    from tests.helpers import make_problem

    tasks, test = make_taskset(4), make_taskset(2, seed=9)
    codes = replace(tasks, images=encode_pixels(tasks.images / tasks.images.max()))
    floats = replace(codes, images=decode_pixels(codes.images))
    assert codes.images.dtype == torch.uint8 and codes.images.element_size() * 4 == floats.images.element_size()
    problem = AnilProblem(small_conv(), AnilConfig(ways=3, delta=0.3, gamma=1e-3))
    lam = problem.init_lambda(0, dtype)
    v = randn(lam.numel(), seed=0).to(dtype)
    for memory_gb in (None, 0.0):
        config = InfluenceConfig(image_chunk=8, solver=SolverConfig(damping=5.0), memory_gb=memory_gb)
        results = []
        for task_set in (codes, floats):
            analyzer = InfluenceAnalyzer(problem, lam, task_set, config=config)
            results.append([analyzer.binding.phi, analyzer.hvp(v), analyzer.gradient(analyzer.c),
                            analyzer.task_gradients([0, 3]), analyzer.scores(replace(test, images=task_set.images)).tasks])
        for a, b in zip(*results):
            assert torch.equal(a, b)
    for form in ("anil", "imaml", "maml"):  # x_tr / x_val as the forms read them, and the meta gradient
        problem = make_problem(form) if form != "anil" else AnilProblem(small_conv(), AnilConfig(ways=3))
        if form != "anil":  # the MLP forms take flat inputs
            codes_flat = replace(codes, images=codes.images.flatten(1))
            pair = (codes_flat, replace(codes_flat, images=decode_pixels(codes_flat.images)))
        else:
            pair = (codes, floats)
        lam = problem.init_lambda(0, dtype)
        batches = [TaskBatch.from_taskset(t, dtype=dtype) for t in pair]
        assert batches[0].x_tr.dtype == dtype and torch.equal(batches[0].x_val, batches[1].x_val)
        assert torch.equal(problem.predict(lam, batches[0]), problem.predict(lam, batches[1]))
        grads = [meta_gradient(problem, lam, b, torch.full((len(b),), 0.25, dtype=dtype))[0] for b in batches]
        assert torch.equal(*grads)


@pytest.mark.parametrize("name", ["conv4", "resnet12", "mlp-tanh"])
def test_a_tangent_sweep_given_g_adds_up_the_pulls_terms_once(name, monkeypatch):
    """``tangent(v, g)`` then ``pull(m, g, v)``: the second-order pull of torch.func (float64), kept or
    recomputed; recomputed chunks run one tangent pass per product where no pull reads a tangent
    (piecewise-linear bodies), two where one does (a smooth activation)."""
    make, shape = BODIES[name]
    body = make()
    lam, x = body.init(0, torch.float64), randn(14, *shape, seed=1)
    g, m, v = randn(14, body.out_features, seed=2), randn(14, body.out_features, seed=3), randn(lam.numel(), seed=4)
    expected = grad(lambda la: (m * body(la, x)).sum() + (g * jvp(lambda l2: body(l2, x), (la,), (v,))[1]).sum())(lam)
    calls = []
    real_tangent = TracedPasses.tangent
    monkeypatch.setattr(TracedPasses, "tangent", lambda self, u: calls.append(1) or real_tangent(self, u))
    for memory in (float("inf"), 0.0):
        images = ImageBody(body, lam, x, chunk=6, memory=memory, passes="traced")
        close(images.pull(m, g, v), expected)  # no tangent sweep first: the pull runs the tangents itself
        for _ in range(2):  # the second product: g's signal already taken
            calls.clear()
            close(images.tangent(v, g), jvp(lambda la: body(la, x), (lam,), (v,))[1])
            close(images.pull(m, g, v), expected)
            if memory == 0.0:
                assert len(calls) == len(images.chunks) * (2 if name == "mlp-tanh" else 1)
    smooth = body_passes(body, lam, x, "traced")
    smooth.cotangent(g)
    if name == "mlp-tanh":
        with pytest.raises(ValueError, match="reads tangents"):
            smooth.pull(m, v, terms=False)
    else:
        smooth.tangent(v)
        close(smooth.take_terms() + smooth.pull(m, v, terms=False), expected)
        with pytest.raises(RuntimeError, match="take_terms needs a tangent pass"):
            smooth.take_terms()
