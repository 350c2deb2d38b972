"""CSC layer tests against independent references.

The references are dense matrices (the synthesis operator A built column by
column, checked once against a brute-force loop), numpy's eigvalsh, and
scikit-learn's coordinate-descent Lasso / ElasticNet.  Every numerical
comparison runs in float64 on tiny problems.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import ElasticNet, Lasso
from torch import nn

from robust_csc.csc import (
    CSCConv2d,
    analysis,
    csc_encode,
    csc_layers,
    csc_objective,
    get_lambda,
    lambda_override,
    normalize_atoms,
    power_iteration,
    record_stats,
    set_lambda,
    synthesis,
)
from robust_csc.errors import RobustCSCError
from robust_csc.models import create_model

DT = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------
# Independent references
# ----------------------------------------------------------------------------


def out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Spatial size of a conv2d output (the textbook formula)."""
    return (size + 2 * padding - kernel) // stride + 1


def dense_synthesis(weight: torch.Tensor, stride: int, padding: int, x_size: tuple[int, int]) -> np.ndarray:
    """The matrix of z -> synthesis(z): column j is the image of unit vector e_j."""
    c_out, k = weight.shape[0], weight.shape[-1]
    h, w = out_size(x_size[0], k, stride, padding), out_size(x_size[1], k, stride, padding)
    n = c_out * h * w
    units = torch.eye(n, dtype=weight.dtype).view(n, c_out, h, w)
    with torch.no_grad():
        cols = synthesis(units, weight.detach(), stride, padding, x_size)
    return cols.reshape(n, -1).T.numpy().copy()


def brute_transposed_conv(z: np.ndarray, weight: np.ndarray, stride: int, padding: int, x_size) -> np.ndarray:
    """Transposed convolution by loops: the adjoint of the cross-correlation conv2d."""
    c_out, c_in, k, _ = weight.shape
    out = np.zeros((c_in, x_size[0], x_size[1]))
    _, h, w = z.shape
    for co in range(c_out):
        for i in range(h):
            for j in range(w):
                for ci in range(c_in):
                    for a in range(k):
                        for b in range(k):
                            r, c = i * stride - padding + a, j * stride - padding + b
                            if 0 <= r < x_size[0] and 0 <= c < x_size[1]:
                                out[ci, r, c] += z[co, i, j] * weight[co, ci, a, b]
    return out


def objective(A: np.ndarray, x: np.ndarray, z: np.ndarray, lam: float, mu: float = 0.0) -> float:
    r = x - A @ z
    return float(lam * np.abs(z).sum() + 0.5 * mu * (z @ z) + 0.5 * (r @ r))


def soft(v: np.ndarray, t: float) -> np.ndarray:
    return np.sign(v) * np.maximum(np.abs(v) - t, 0.0)


def prox(v: np.ndarray, lam: float, eta: float, mu: float, non_negative: bool) -> np.ndarray:
    """prox of eta * (lam |.|_1 + mu/2 |.|^2 (+ indicator z >= 0))."""
    p = np.maximum(v - lam * eta, 0.0) if non_negative else soft(v, lam * eta)
    return p / (1.0 + mu * eta)


def dense_unrolled(A, x, eta, lam, n_steps, iteration, non_negative=True, mu=0.0):
    """Reference unrolled solver on dense matrices.

    Step 1 starts from z = 0.  From step 3 on, "official" and "fista" use the
    momentum point y = z + ((t - 1) / t_next)(z - z_prev) with t = 1 before the
    first step; "official" takes the gradient at z, "fista" at y.
    """
    grad = lambda p: A.T @ (x - A @ p)  # noqa: E731  (minus the gradient of the data term)
    z_prev, z = None, prox(eta * (A.T @ x), lam, eta, mu, non_negative)
    t = (1.0 + math.sqrt(5.0)) / 2.0  # t after the first two FISTA steps with t_0 = 1
    for k in range(1, n_steps):
        if k >= 2 and iteration != "ista":
            t_next = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
            y = z + ((t - 1.0) / t_next) * (z - z_prev)
            t = t_next
        else:
            y = z
        g = grad(y) if iteration == "fista" else grad(z)
        z_prev, z = z, prox(y + eta * g, lam, eta, mu, non_negative)
    return z


def make_layer(c_in=2, c_out=4, k=3, stride=1, padding=1, seed=0, **kw) -> CSCConv2d:
    torch.manual_seed(seed)
    return CSCConv2d(c_in, c_out, k, stride, padding, **kw).double().eval()


def rand(*shape, seed=0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=DT)


def flat(t: torch.Tensor) -> np.ndarray:
    return t.detach().reshape(-1).numpy().astype(np.float64)


# ----------------------------------------------------------------------------
# 1-2. Operators, the dense matrix and the Lipschitz constant
# ----------------------------------------------------------------------------

OPERATOR_CASES = [
    (stride, k, pad, size)
    for stride in (1, 2)
    for k in (1, 3, 5, 7)
    for pad in sorted({k // 2, 0})
    for size in (7, 8)
]


@pytest.mark.parametrize("stride,k,pad,size", OPERATOR_CASES)
def test_adjoint_identity(stride, k, pad, size):
    weight = rand(3, 2, k, k, seed=1)
    x_size = (size, size + 1)  # non-square too
    h, w = out_size(x_size[0], k, stride, pad), out_size(x_size[1], k, stride, pad)
    z = rand(2, 3, h, w, seed=2)
    r = rand(2, 2, *x_size, seed=3)
    az = synthesis(z, weight, stride, pad, x_size)
    atr = analysis(r, weight, stride, pad)
    assert az.shape == r.shape and atr.shape == z.shape
    lhs, rhs = (az * r).sum().item(), (z * atr).sum().item()
    assert lhs == pytest.approx(rhs, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("stride,k,pad,size", [(1, 3, 1, 5), (2, 3, 1, 8), (2, 5, 0, 7), (1, 1, 0, 5)])
def test_dense_matrix_matches_brute_force_transposed_conv(stride, k, pad, size):
    weight = rand(3, 2, k, k, seed=4)
    x_size = (size, size)
    A = dense_synthesis(weight, stride, pad, x_size)
    h = out_size(size, k, stride, pad)
    assert A.shape == (2 * size * size, 3 * h * h)
    wn = weight.numpy()
    B = np.zeros_like(A)
    for j in range(A.shape[1]):
        e = np.zeros(A.shape[1])
        e[j] = 1.0
        B[:, j] = brute_transposed_conv(e.reshape(3, h, h), wn, stride, pad, x_size).reshape(-1)
    np.testing.assert_allclose(A, B, rtol=0, atol=1e-13)
    # analysis is its transpose
    r = rand(1, 2, size, size, seed=5)
    np.testing.assert_allclose(flat(analysis(r, weight, stride, pad)), A.T @ flat(r), rtol=0, atol=1e-12)


@pytest.mark.parametrize("stride,k,pad,size", [(1, 3, 1, 6), (2, 3, 1, 7), (1, 5, 2, 5), (2, 7, 3, 8), (1, 1, 0, 6)])
def test_power_iteration_matches_eigvalsh(stride, k, pad, size):
    x_size = (size, size)
    dictionary = make_layer(2, 3, k, stride, pad, seed=6).dictionary().detach()
    A = dense_synthesis(dictionary, stride, pad, x_size)
    eig = np.linalg.eigvalsh(A.T @ A)
    lmax = eig[-1]
    # enough iterations for the gap: the Rayleigh quotient error decays like (l2 / l1)^(2 k)
    ratio = eig[eig < lmax * (1 - 1e-9)].max() / lmax  # the next distinct eigenvalue
    iters = int(min(30_000, max(1000, math.log(1e-10) / (2 * math.log(ratio)))))
    layer = make_layer(2, 3, k, stride, pad, seed=6, power_iters=iters, power_tol=0.0)

    lip, v = power_iteration(dictionary, x_size, stride, pad, max_iter=iters, tol=None)
    assert float(lip) == pytest.approx(lmax, rel=1e-6)
    assert float(v.norm()) == pytest.approx(1.0, rel=1e-12)
    # its vector is an eigenvector of A^T A for L
    vv = flat(v)
    np.testing.assert_allclose(A.T @ (A @ vv), lmax * vv, atol=1e-4 * lmax)

    assert float(layer.step_size(x_size)) == pytest.approx(0.9 / lmax, rel=1e-6)
    # lipschitz() runs a fixed 1000 iterations: a lower bound, close but not 1e-6 when the gap is tiny
    lip_1000 = layer.lipschitz(x_size)
    assert lip_1000 <= lmax * (1 + 1e-12)
    assert lip_1000 == pytest.approx(lmax, rel=1e-3)


# ----------------------------------------------------------------------------
# 3. Convergence to the lasso / elastic-net minimum (scikit-learn reference)
# ----------------------------------------------------------------------------


def sklearn_solution(A, x, lam, mu, non_negative):
    n = A.shape[0]  # sklearn minimises 1/(2 n) |x - A z|^2 + ...
    if mu == 0:
        model = Lasso(alpha=lam / n, fit_intercept=False, positive=non_negative, tol=1e-13, max_iter=200_000)
    else:
        # alpha * l1_ratio = lam / n and alpha * (1 - l1_ratio) = mu / n
        model = ElasticNet(
            alpha=(lam + mu) / n,
            l1_ratio=lam / (lam + mu),
            fit_intercept=False,
            positive=non_negative,
            tol=1e-13,
            max_iter=200_000,
        )
    model.fit(A, x)
    return model.coef_


# ISTA converges at rate O(1/k) on the overcomplete (stride 1) problem, too
# slowly for small lambda; the strided problem is strongly convex (A^T A is
# positive definite), where both converge linearly and the minimiser is unique.
LASSO_CASES = (
    [("fista", 1, 6, 3000, lam) for lam in (0.01, 0.05, 0.2)]
    + [("ista", 1, 6, 3000, 0.2)]
    + [(it, 2, 7, 3000, lam) for it in ("fista", "ista") for lam in (0.01, 0.05, 0.2)]
)


@pytest.mark.parametrize("non_negative", [True, False])
@pytest.mark.parametrize("iteration,stride,size,n_steps,lam", LASSO_CASES)
def test_layer_reaches_lasso_minimum(iteration, stride, size, n_steps, lam, non_negative):
    layer = make_layer(
        2, 4, 3, stride, 1, seed=7, lam=lam, n_steps=n_steps, iteration=iteration, non_negative=non_negative
    )
    x = rand(1, 2, size, size, seed=8)
    with torch.no_grad():
        z = layer(x)
    dictionary = layer.dictionary().detach()
    A = dense_synthesis(dictionary, stride, 1, (size, size))
    xv = flat(x)
    z_ref = sklearn_solution(A, xv, lam, 0.0, non_negative)
    f_layer, f_ref = objective(A, xv, flat(z), lam), objective(A, xv, z_ref, lam)
    assert f_layer == pytest.approx(f_ref, rel=1e-4)
    if stride == 2:
        assert np.linalg.eigvalsh(A.T @ A).min() > 1e-3  # strongly convex: compare the codes too
        np.testing.assert_allclose(flat(z), z_ref, atol=1e-6)
    if non_negative:
        assert float(z.min()) >= 0.0
    else:
        assert float(z.min()) < 0.0  # the signed problem really used negative codes
    # csc_objective agrees with the dense objective
    got = float(csc_objective(x, z, dictionary, lam, stride=stride, padding=1))  # dictionary is detached
    assert got == pytest.approx(f_layer, rel=1e-12)


@pytest.mark.parametrize("non_negative", [True, False])
def test_layer_reaches_elastic_net_minimum(non_negative):
    lam, mu = 0.05, 0.3
    layer = make_layer(
        2, 4, 3, 2, 1, seed=9, lam=lam, mu=mu, n_steps=3000, iteration="fista", non_negative=non_negative
    )
    x = rand(1, 2, 7, 7, seed=10)
    with torch.no_grad():
        z = layer(x)
    A = dense_synthesis(layer.dictionary().detach(), 2, 1, (7, 7))
    xv = flat(x)
    z_ref = sklearn_solution(A, xv, lam, mu, non_negative)
    f_layer, f_ref = objective(A, xv, flat(z), lam, mu), objective(A, xv, z_ref, lam, mu)
    assert f_layer == pytest.approx(f_ref, rel=1e-4)
    # the elastic net is strongly convex: the minimiser itself is unique
    np.testing.assert_allclose(flat(z), z_ref, atol=1e-3)
    got = float(csc_objective(x, z, layer.dictionary().detach(), lam, stride=2, padding=1, mu=mu))
    assert got == pytest.approx(f_layer, rel=1e-12)


# ----------------------------------------------------------------------------
# 4-5. The zero-code threshold and monotone ISTA
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("non_negative", [True, False])
def test_lambda_above_dual_norm_gives_zero_code(non_negative):
    layer = make_layer(2, 4, 3, 1, 1, seed=11, n_steps=20, non_negative=non_negative, iteration="fista")
    x = rand(2, 2, 6, 6, seed=12)
    corr = analysis(x, layer.dictionary().detach(), 1, 1)  # A^T x per sample
    # make the most negative correlation dominate, so the two thresholds differ
    if corr.max() > -corr.min():
        x, corr = -x, -corr
    inf_norm = float(corr.abs().max())
    top = float(corr.max())
    assert 0 < top < inf_norm

    with torch.no_grad():
        layer.lam = inf_norm * 1.0001
        assert float(layer(x).abs().max()) == 0.0
        layer.lam = inf_norm * 0.999
        z = layer(x)
        if non_negative:
            # only positive correlations matter: max(A^T x) < ||A^T x||_inf is the threshold
            assert float(z.abs().max()) == 0.0
            layer.lam = top * 1.0001
            assert float(layer(x).abs().max()) == 0.0
            layer.lam = top * 0.999
            assert float(layer(x).abs().max()) > 0.0
        else:
            assert float(z.abs().max()) > 0.0
            assert float(z.min()) < 0.0


@pytest.mark.parametrize("non_negative,mu", [(True, 0.0), (False, 0.0), (True, 0.2)])
def test_ista_objective_never_rises(non_negative, mu):
    lam = 0.05
    layer = make_layer(2, 4, 3, 1, 1, seed=13, lam=lam, mu=mu, iteration="ista", non_negative=non_negative)
    x = rand(1, 2, 6, 6, seed=14)
    A = dense_synthesis(layer.dictionary().detach(), 1, 1, (6, 6))
    xv = flat(x)
    values = [objective(A, xv, np.zeros(A.shape[1]), lam, mu)]
    with torch.no_grad():
        for n in range(1, 31):
            layer.n_steps = n
            values.append(objective(A, xv, flat(layer(x)), lam, mu))
    diffs = np.diff(values)
    assert (diffs <= 1e-12 * abs(values[0])).all(), values
    assert values[-1] < 0.9 * values[0]  # and it actually made progress


# ----------------------------------------------------------------------------
# 6. Gradients
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("iteration", ["official", "fista"])
@pytest.mark.parametrize("non_negative", [True, False])
@pytest.mark.parametrize("stride,mu", [(1, 0.0), (2, 0.3)])
def test_gradcheck_through_unrolled_encoder(iteration, non_negative, stride, mu):
    torch.manual_seed(15)
    x = torch.randn(2, 2, 5, 5, dtype=DT, requires_grad=True)
    raw = torch.randn(3, 2, 3, 3, dtype=DT, requires_grad=True)
    eta = 0.2  # fixed step (no gradient flows into it)

    def encode(x_, w_):
        return csc_encode(
            x_,
            normalize_atoms(w_),
            eta,
            0.1,
            stride=stride,
            padding=1,
            n_steps=3,
            non_negative=non_negative,
            mu=mu,
            iteration=iteration,
        )

    z = encode(x, raw)
    assert float((z != 0).double().mean()) > 0.2  # the check is not trivially about zeros
    assert torch.autograd.gradcheck(encode, (x, raw), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_layer_gradient_reaches_weight_and_input():
    layer = make_layer(2, 4, 3, 1, 1, seed=16, n_steps=3).train()
    x = rand(2, 2, 6, 6, seed=17).requires_grad_(True)
    layer(x).pow(2).sum().backward()
    assert layer.weight.grad is not None and float(layer.weight.grad.abs().sum()) > 0
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


# ----------------------------------------------------------------------------
# 7. Per-sample lambda
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("non_negative", [True, False])
@pytest.mark.parametrize("iteration,mu", [("official", 0.0), ("fista", 0.0), ("ista", 0.2)])
def test_per_sample_lambda_equals_separate_runs(non_negative, iteration, mu):
    layer = make_layer(2, 4, 3, 2, 1, seed=18, n_steps=4, non_negative=non_negative, iteration=iteration, mu=mu)
    x = rand(3, 2, 7, 7, seed=19)
    lams = [0.0, 0.05, 0.4]
    with torch.no_grad():
        set_lambda(layer, torch.tensor(lams, dtype=DT))
        batch = layer(x)
        for b, lam in enumerate(lams):
            set_lambda(layer, lam)
            alone = layer(x[b : b + 1])
            torch.testing.assert_close(batch[b : b + 1], alone, rtol=0, atol=1e-10)
    # the lambdas really made the samples differ in sparsity
    density = (batch != 0).flatten(1).double().mean(1)
    assert density[0] > density[2]


def test_per_sample_lambda_length_mismatch_raises():
    layer = make_layer()
    set_lambda(layer, torch.tensor([0.1, 0.2, 0.3], dtype=DT))
    with pytest.raises(RobustCSCError):
        layer(rand(2, 2, 6, 6))
    with pytest.raises(RobustCSCError):
        set_lambda(layer, torch.tensor([[0.1, 0.2]]))  # not 1-D


def test_csc_objective_per_sample_matches_dense():
    weight = normalize_atoms(rand(4, 2, 3, 3, seed=20))
    x = rand(2, 2, 6, 6, seed=21)
    z = rand(2, 4, 6, 6, seed=22)
    lam, mu = torch.tensor([0.1, 0.7], dtype=DT), 0.25
    A = dense_synthesis(weight, 1, 1, (6, 6))
    got = csc_objective(x, z, weight, lam, padding=1, mu=mu)
    for b in range(2):
        want = objective(A, flat(x[b]), flat(z[b]), float(lam[b]), mu)
        assert float(got[b]) == pytest.approx(want, rel=1e-12)


# ----------------------------------------------------------------------------
# 8. The iterations against hand-written formulas
# ----------------------------------------------------------------------------


def _setup_dense(stride=1, seed=23):
    layer = make_layer(2, 4, 3, stride, 1, seed=seed)
    x = rand(1, 2, 6, 6, seed=seed + 1)
    weight = layer.dictionary().detach()
    eta = layer.step_size((6, 6))  # float64 0-dim tensor, as the layer uses it
    A = dense_synthesis(weight, stride, 1, (6, 6))
    return layer, x, weight, eta, A, flat(x)


def test_official_two_steps_hand_formula():
    layer, x, weight, eta_t, A, xv = _setup_dense()
    eta, lam = float(eta_t), 0.1
    relu = lambda v: np.maximum(v, 0.0)  # noqa: E731
    z0 = relu(eta * A.T @ xv - lam * eta)
    z1 = relu(z0 + eta * A.T @ (xv - A @ z0) - lam * eta)
    got = csc_encode(x, weight, eta_t, lam, padding=1, n_steps=2, iteration="official")
    np.testing.assert_allclose(flat(got), z1, rtol=0, atol=1e-12)
    # one step is z0; the layer itself gives z1
    got1 = csc_encode(x, weight, eta_t, lam, padding=1, n_steps=1)
    np.testing.assert_allclose(flat(got1), z0, rtol=0, atol=1e-12)
    layer.lam = lam
    with torch.no_grad():
        np.testing.assert_allclose(flat(layer(x)), z1, rtol=0, atol=1e-12)


def test_three_steps_official_vs_fista_gradient_point():
    _, x, weight, eta_t, A, xv = _setup_dense()
    eta, lam = float(eta_t), 0.05
    relu = lambda v: np.maximum(v, 0.0)  # noqa: E731
    z0 = relu(eta * A.T @ xv - lam * eta)
    z1 = relu(z0 + eta * A.T @ (xv - A @ z0) - lam * eta)
    t1 = (1 + math.sqrt(5)) / 2
    t2 = (1 + math.sqrt(1 + 4 * t1**2)) / 2
    y = z1 + ((t1 - 1) / t2) * (z1 - z0)
    z2_official = relu(y + eta * A.T @ (xv - A @ z1) - lam * eta)
    z2_fista = relu(y + eta * A.T @ (xv - A @ y) - lam * eta)
    z2_ista = relu(z1 + eta * A.T @ (xv - A @ z1) - lam * eta)
    assert np.abs(z2_official - z2_fista).max() > 1e-6  # the cases really differ
    for iteration, want in (("official", z2_official), ("fista", z2_fista), ("ista", z2_ista)):
        got = csc_encode(x, weight, eta_t, lam, padding=1, n_steps=3, iteration=iteration)
        np.testing.assert_allclose(flat(got), want, rtol=0, atol=1e-12, err_msg=iteration)


@pytest.mark.parametrize("iteration", ["official", "fista", "ista"])
@pytest.mark.parametrize("non_negative,mu,stride", [(True, 0.0, 1), (False, 0.0, 2), (False, 0.4, 1), (True, 0.4, 2)])
def test_many_steps_match_dense_reference(iteration, non_negative, mu, stride):
    _, x, weight, eta_t, A, xv = _setup_dense(stride=stride, seed=25)
    lam = 0.05
    for n_steps in (1, 2, 4, 6):
        want = dense_unrolled(A, xv, float(eta_t), lam, n_steps, iteration, non_negative, mu)
        got = csc_encode(
            x,
            weight,
            eta_t,
            lam,
            stride=stride,
            padding=1,
            n_steps=n_steps,
            non_negative=non_negative,
            mu=mu,
            iteration=iteration,
        )
        np.testing.assert_allclose(flat(got), want, rtol=0, atol=1e-12, err_msg=f"{n_steps} steps")


def test_float_step_size_keeps_float64_precision():
    """A Python-float step size must give the same float64 code as a tensor one."""
    _, x, weight, eta_t, A, xv = _setup_dense()
    eta, lam = float(eta_t), 0.1
    z0 = np.maximum(eta * A.T @ xv - lam * eta, 0.0)
    got = csc_encode(x, weight, eta, lam, padding=1, n_steps=1, non_negative=True)
    np.testing.assert_allclose(flat(got), z0, rtol=0, atol=1e-13)


def test_unknown_iteration_raises():
    with pytest.raises(RobustCSCError):
        csc_encode(rand(1, 2, 5, 5), rand(3, 2, 3, 3), 0.1, 0.1, iteration="adam")
    with pytest.raises(RobustCSCError):
        CSCConv2d(2, 3, 3, iteration="adam")


# ----------------------------------------------------------------------------
# 9. Eval-mode caching of the step size
# ----------------------------------------------------------------------------


def _fresh_copy(layer: CSCConv2d) -> CSCConv2d:
    fresh = make_layer(
        layer.in_channels,
        layer.out_channels,
        layer.kernel_size,
        layer.stride,
        layer.padding,
        seed=99,
        n_steps=layer.n_steps,
        non_negative=layer.non_negative,
        mu=layer.mu,
        iteration=layer.iteration,
    )
    fresh.load_state_dict(layer.state_dict())
    fresh.lam = layer.lam
    return fresh.eval()


def _dense_lmax(layer: CSCConv2d, x_size) -> float:
    A = dense_synthesis(layer.dictionary().detach(), layer.stride, layer.padding, x_size)
    return float(np.linalg.eigvalsh(A.T @ A).max())


def _check_against_dense(layer: CSCConv2d, x: torch.Tensor, z: torch.Tensor) -> float:
    """z is the layer's unrolled code for its current dictionary and its current step; returns L = 0.9 / eta."""
    x_size = tuple(x.shape[-2:])
    count = layer.power_iteration_count
    eta = float(layer.step_size(x_size))  # served from the cache: no new power iteration
    assert layer.power_iteration_count == count
    A = dense_synthesis(layer.dictionary().detach(), layer.stride, layer.padding, x_size)
    for b in range(x.shape[0]):
        want = dense_unrolled(A, flat(x[b]), eta, layer.lam, layer.n_steps, layer.iteration, layer.non_negative)
        np.testing.assert_allclose(flat(z[b]), want, rtol=0, atol=1e-12)
    return 0.9 / eta


def test_eval_caches_step_size_until_weight_changes():
    layer = make_layer(seed=26, n_steps=3)
    x = rand(2, 2, 6, 6, seed=27)
    with torch.no_grad():
        z_first = layer(x)
        count = layer.power_iteration_count
        assert count == 1
        z_cached = layer(x)
        assert layer.power_iteration_count == count
        assert torch.equal(z_first, z_cached)
        # a fresh layer with the same weight gives exactly the same code
        assert torch.equal(_fresh_copy(layer)(x), z_cached)
        lmax_old = _dense_lmax(layer, (6, 6))
        _assert_safe(_check_against_dense(layer, x, z_cached), lmax_old)

        # a pure rescaling: recomputed, but normalised atoms make the code the same
        layer.weight.mul_(1.5)
        z_scaled = layer(x)
        assert layer.power_iteration_count == count + 1
        torch.testing.assert_close(z_scaled, z_first, rtol=1e-4, atol=1e-6)

        # an in-place change of the atoms: the new dictionary and a new step size
        layer.weight.add_(0.5 * rand(*layer.weight.shape, seed=28))
        z_changed = layer(x)
        assert layer.power_iteration_count == count + 2
        lmax_new = _dense_lmax(layer, (6, 6))
        assert abs(lmax_new - lmax_old) > 0.05 * lmax_new
        _assert_safe(_check_against_dense(layer, x, z_changed), lmax_new)
        assert torch.equal(layer(x), z_changed)
        assert layer.power_iteration_count == count + 2

        # load_state_dict
        layer.load_state_dict(make_layer(seed=29).state_dict())
        z_loaded = layer(x)
        assert layer.power_iteration_count == count + 3
        lmax_loaded = _dense_lmax(layer, (6, 6))
        assert abs(lmax_loaded - lmax_new) > 0.05 * lmax_new
        _assert_safe(_check_against_dense(layer, x, z_loaded), lmax_loaded)


def _assert_safe(lipschitz_estimate: float, lmax: float) -> None:
    """eta = 0.9 / L_est must lie in [0.9 / L, 1 / L]: a lower bound L_est of L, within the 0.9 margin."""
    assert 0.9 * lmax <= lipschitz_estimate <= lmax * (1 + 1e-12)


@pytest.mark.parametrize("change", ["add_", "load_state_dict", "none"])
def test_eval_step_is_safe_after_weight_change(change):
    layer = make_layer(seed=26, n_steps=3)
    x = rand(2, 2, 6, 6, seed=27)
    with torch.no_grad():
        layer(x)
        if change == "add_":
            layer.weight.add_(0.5 * rand(*layer.weight.shape, seed=28))
        elif change == "load_state_dict":
            layer.load_state_dict(make_layer(seed=29).state_dict())
        z = layer(x)
        lmax = _dense_lmax(layer, (6, 6))
        _assert_safe(_check_against_dense(layer, x, z), lmax)
        _assert_safe(0.9 / float(_fresh_copy(layer).step_size((6, 6))), lmax)


def test_eval_cache_sees_changes_made_through_data():
    """weight.data.copy_ (common in EMA / checkpoint code) must not leave a stale step size."""
    layer = make_layer(seed=30, n_steps=3)
    x = rand(2, 2, 6, 6, seed=31)
    with torch.no_grad():
        layer(x)
        lmax_old = _dense_lmax(layer, (6, 6))
        layer.weight.data.copy_(0.1 * rand(*layer.weight.shape, seed=32).abs() + 0.05)
        lmax_new = _dense_lmax(layer, (6, 6))
        assert lmax_new > 1.5 * lmax_old  # all-positive atoms: a much larger ||A||^2
        z = layer(x)
    _assert_safe(_check_against_dense(layer, x, z), lmax_new)


def test_train_mode_refreshes_every_forward():
    layer = make_layer(seed=33).train()
    x = rand(2, 2, 6, 6, seed=34)
    for i in range(1, 4):
        layer(x)
        assert layer.power_iteration_count == i
    layer.eval()
    with torch.no_grad():
        layer(x)
        layer(x)
    assert layer.power_iteration_count == 4


def test_optimizer_step_invalidates_eval_cache():
    layer = make_layer(seed=35)
    x = rand(2, 2, 6, 6, seed=36)
    opt = torch.optim.SGD(layer.parameters(), lr=1.0)
    with torch.no_grad():
        layer(x)
    count = layer.power_iteration_count
    layer.train()
    layer(x).sum().backward()
    opt.step()
    layer.eval()
    with torch.no_grad():
        z = layer(x)
    assert layer.power_iteration_count == count + 2
    _assert_safe(_check_against_dense(layer, x, z), _dense_lmax(layer, (6, 6)))


# ----------------------------------------------------------------------------
# 10. Shapes and statistics
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("stride,k,pad,size", OPERATOR_CASES)
def test_output_shape_matches_conv2d(stride, k, pad, size):
    layer = make_layer(2, 3, k, stride, pad, seed=37, n_steps=2)
    conv = nn.Conv2d(2, 3, k, stride, pad, bias=False)
    x = rand(2, 2, size, size + 1, seed=38)
    assert layer.weight.shape == conv.weight.shape
    with torch.no_grad():
        assert layer(x).shape == conv(x.float()).shape


@pytest.mark.parametrize("stride,k,pad,size", [(1, 3, 1, 6), (2, 3, 1, 7), (2, 5, 2, 8), (1, 1, 0, 5)])
def test_record_stats_match_dense(stride, k, pad, size):
    layer = make_layer(2, 4, k, stride, pad, seed=39, n_steps=3, lam=0.15)
    x = rand(3, 2, size, size, seed=40)
    with torch.no_grad(), record_stats(layer) as chosen:
        assert list(chosen.values()) == [layer]
        z = layer(x)
    assert layer.record_stats is False  # restored on exit
    stats = layer.last_stats
    A = dense_synthesis(layer.dictionary().detach(), stride, pad, (size, size))
    for b in range(3):
        r = flat(x[b]) - A @ flat(z[b])
        assert float(stats.recon_error[b]) == pytest.approx(float(r @ r), rel=1e-6)
        zb = flat(z[b])
        assert float(stats.code_density[b]) == pytest.approx(np.count_nonzero(zb) / zb.size, abs=1e-7)
    assert 0 < float(stats.code_density.min()) and float(stats.code_density.max()) < 1


@pytest.mark.parametrize("non_negative", [True, False])
def test_code_density_is_the_exact_count_of_non_zeros(non_negative):
    layer = make_layer(3, 8, 3, 1, 1, seed=43, n_steps=2, lam=0.2, non_negative=non_negative).float()
    x = rand(5, 3, 9, 9, seed=44).float()
    with torch.no_grad(), record_stats(layer):
        z = layer(x)
    codes = z.flatten(1).numpy()
    assert (codes < 0).any() != non_negative  # signed codes really have negative entries
    expected = np.count_nonzero(codes, axis=1) / codes.shape[1]
    assert layer.last_stats.code_density.tolist() == expected.astype(np.float32).tolist()


def test_record_stats_of_some_rows_equal_those_rows_of_all():
    """stats_rows (what the lambda sweep uses) gives exactly the full statistics' rows; restored on exit."""
    layer = make_layer(2, 4, 3, 1, 1, seed=41, n_steps=2, lam=0.1)
    x = rand(6, 2, 7, 7, seed=42)
    layer.lam = torch.tensor([0.05, 0.1, 0.2, 0.3, 0.4, 0.5], dtype=torch.float64)
    with torch.no_grad(), record_stats(layer):
        layer(x)
        full = layer.last_stats
        layer.stats_rows = slice(2, 5)
        layer(x)
        part = layer.last_stats
    assert layer.stats_rows is None and layer.record_stats is False
    assert part.recon_error.shape == (3,)
    assert torch.allclose(part.recon_error, full.recon_error[2:5], rtol=1e-6)
    assert torch.equal(part.code_density, full.code_density[2:5])
    with torch.no_grad(), record_stats(layer, rows=slice(0, 1)):
        layer(x)
    assert torch.allclose(layer.last_stats.recon_error, full.recon_error[:1], rtol=1e-6)
    with pytest.raises(RobustCSCError, match="slice"):
        with record_stats(layer, rows=[0, 1]):
            pass


# ----------------------------------------------------------------------------
# 11. Lambda controls on a model
# ----------------------------------------------------------------------------


def _snapshot(model):
    return {n: (v.clone() if isinstance(v, torch.Tensor) else v) for n, v in get_lambda(model).items()}


def _same(a, b) -> bool:
    if a.keys() != b.keys():
        return False
    for n in a:
        va, vb = a[n], b[n]
        if isinstance(va, torch.Tensor) != isinstance(vb, torch.Tensor):
            return False
        if isinstance(va, torch.Tensor):
            if not torch.equal(va, vb):
                return False
        elif va != vb:
            return False
    return True


@pytest.fixture(scope="module")
def sdnet_all():
    return create_model("sdnet18_all", width=4)


def _expected_names():
    names = ["stem.0"]
    for layer in range(1, 5):
        for block in range(2):
            names += [f"layer{layer}.{block}.conv1", f"layer{layer}.{block}.conv2"]
    return names


def test_csc_layers_lists_all(sdnet_all):
    layers = csc_layers(sdnet_all)
    assert list(layers) == _expected_names()
    assert all(isinstance(m, CSCConv2d) for m in layers.values())


def test_set_and_get_lambda(sdnet_all):
    model = sdnet_all
    names = _expected_names()
    set_lambda(model, 0.3)
    assert get_lambda(model) == {n: 0.3 for n in names}

    set_lambda(model, 0.05, "stem")
    want = {n: 0.3 for n in names}
    want["stem.0"] = 0.05
    assert get_lambda(model) == want

    set_lambda(model, 0.2, "layer2.*")
    for n in names:
        if n.startswith("layer2."):
            want[n] = 0.2
    assert get_lambda(model) == want

    set_lambda(model, 0.0, ["layer1.0.conv1", "layer4.*.conv2"])
    want.update({"layer1.0.conv1": 0.0, "layer4.0.conv2": 0.0, "layer4.1.conv2": 0.0})
    assert get_lambda(model) == want

    set_lambda(model, {"stem.0": 0.7, "layer3.1.conv2": 0.01})
    want.update({"stem.0": 0.7, "layer3.1.conv2": 0.01})
    assert get_lambda(model) == want

    per_sample = torch.tensor([0.1, 0.2])
    set_lambda(model, per_sample, "stem")
    got = get_lambda(model)["stem.0"]
    assert isinstance(got, torch.Tensor) and torch.equal(got, per_sample)
    set_lambda(model, 0.1)  # leave it tidy for other tests
    assert get_lambda(model) == {n: 0.1 for n in names}


def test_lambda_override_restores_even_on_error(sdnet_all):
    model = sdnet_all
    set_lambda(model, 0.1)
    set_lambda(model, torch.tensor([0.3, 0.4]), "layer1.0.conv1")
    before = _snapshot(model)
    with lambda_override(model, 0.9, "stem"):
        assert get_lambda(model)["stem.0"] == 0.9
        assert get_lambda(model)["layer1.0.conv2"] == 0.1
    assert _same(_snapshot(model), before)

    with pytest.raises(KeyError):
        with lambda_override(model, {"stem.0": 2.0, "layer4.1.conv2": 0.0}):
            assert get_lambda(model)["stem.0"] == 2.0
            raise KeyError("boom")
    assert _same(_snapshot(model), before)
    set_lambda(model, 0.1)


def test_lambda_override_changes_the_forward_pass():
    torch.manual_seed(41)
    model = create_model("sdnet18", width=4).eval()
    x = torch.rand(2, 3, 32, 32)
    stem = csc_layers(model)["stem.0"]
    with torch.no_grad(), record_stats(model, "stem"):
        model(x)
        dense_density = float(stem.last_stats.code_density.mean())
        with lambda_override(model, 1e3):  # the largest lambda allowed (MAX_LAMBDA)
            model(x)
            assert float(stem.last_stats.code_density.max()) == 0.0
        model(x)
        assert float(stem.last_stats.code_density.mean()) == dense_density
    assert dense_density > 0


BAD_LAMBDAS = [
    pytest.param(-0.1, id="negative"),
    pytest.param(float("nan"), id="nan"),
    pytest.param(float("inf"), id="inf"),
    pytest.param(float("-inf"), id="-inf"),
    pytest.param("abc", id="string"),
    pytest.param("0.1", id="numeric-string"),
    pytest.param(None, id="none"),
    pytest.param(torch.tensor([0.1, float("nan")]), id="tensor-nan"),
    pytest.param(torch.tensor([0.1, -1.0]), id="tensor-negative"),
    pytest.param(torch.tensor([[0.1]]), id="tensor-2d"),
]


@pytest.mark.parametrize("bad", BAD_LAMBDAS)
def test_bad_lambda_raises_and_changes_nothing(sdnet_all, bad):
    model = sdnet_all
    set_lambda(model, 0.1)
    set_lambda(model, 0.25, "layer3.*")
    before = _snapshot(model)
    with pytest.raises(RobustCSCError):
        set_lambda(model, bad)
    with pytest.raises(RobustCSCError):
        set_lambda(model, bad, "stem")
    with pytest.raises(RobustCSCError):
        set_lambda(model, {"stem.0": 0.5, "layer1.0.conv1": bad})  # one bad value: nothing set
    with pytest.raises(RobustCSCError):
        with lambda_override(model, bad):
            pass
    assert _same(_snapshot(model), before)
    set_lambda(model, 0.1)


def test_bad_selection_raises(sdnet_all):
    model = sdnet_all
    set_lambda(model, 0.1)
    before = _snapshot(model)
    for selection in ("nothing*", ["layer9.*"], "conv1", []):
        with pytest.raises(RobustCSCError):
            set_lambda(model, 0.5, selection)
    with pytest.raises(RobustCSCError):
        set_lambda(model, {"no.such.layer": 0.5, "stem.0": 0.3})
    assert _same(_snapshot(model), before)


def test_model_without_csc_layers_raises():
    model = create_model("resnet18", width=4)
    assert csc_layers(model) == {}
    with pytest.raises(RobustCSCError):
        set_lambda(model, 0.1)
    with pytest.raises(RobustCSCError):
        set_lambda(model, 0.1, "stem")
    with pytest.raises(RobustCSCError):
        set_lambda(model, {"stem.0": 0.1})
    with pytest.raises(RobustCSCError):
        with lambda_override(model, 0.1):
            pass
    with pytest.raises(RobustCSCError):
        with record_stats(model):
            pass


# ----------------------------------------------------------------------------
# Constructor validation
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(bias=True),
        dict(n_steps=0),
        dict(mu=-1.0),
        dict(mu=float("nan")),
        dict(lam=-0.5),
        dict(kernel_size=(3, 5)),
        dict(stride=0),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs):
    args = dict(in_channels=2, out_channels=3, kernel_size=3)
    args.update(kwargs)
    with pytest.raises(RobustCSCError):
        CSCConv2d(**args)


def test_wrong_input_channels_raises():
    with pytest.raises(RobustCSCError):
        make_layer(2, 3)(rand(1, 3, 6, 6))


def test_eval_on_an_eval_model_keeps_the_step_size_cache():
    # torchattacks calls .eval() on every attack call; that must not rerun power iteration.
    layer = CSCConv2d(3, 4, 3, padding=1).eval()
    x = torch.rand(2, 3, 8, 8)
    layer(x)
    cached = dict(layer._eval_step)
    assert cached
    layer.eval()
    assert layer._eval_step == cached
    layer.train()
    layer.eval()
    assert layer._eval_step == {}
