"""The convolutional sparse coding layer (CSCConv2d) and the lambda controls.

For an input x the layer returns a code z that approximately solves

    min_z  lam * ||z||_1 + (mu / 2) * ||z||_2^2 + 1/2 * ||x - A z||_2^2    (z >= 0 optionally)

with A = conv_transpose2d(., W) (synthesis) and A^T = conv2d(., W) (analysis),
by a few unrolled proximal-gradient steps with step size eta = 0.9 / ||A||^2.

Speed: the step size, the elastic-net scaling and the threshold are folded
into the convolution's weight and bias, so every step is one convolution, one
in-place add and one in-place ReLU over the code.  On the CPU the stem's
convolutions (3-channel patches) run as unfold + batched matrix products.
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robust_csc.constants import MAX_LAMBDA
from robust_csc.errors import RobustCSCError

LambdaValue = Union[float, Tensor]

ITERATIONS = ("official", "fista", "ista")
STEP_SIZE_MARGIN = 0.9  # eta = 0.9 / L, as the official code


# ----------------------------------------------------------------------------
# The operators and the solver, as plain functions (testable on their own)
# ----------------------------------------------------------------------------


def normalize_atoms(weight: Tensor, eps: float = 1e-12) -> Tensor:
    """Scale every atom (a row of weight.view(C_out, -1)) to unit L2 norm."""
    norms = weight.flatten(1).norm(dim=1).clamp_min(eps)
    return weight / norms.view(-1, *([1] * (weight.dim() - 1)))


def output_padding_for(in_size: int, out_size: int, kernel: int, stride: int, padding: int) -> int:
    """The output_padding that makes conv_transpose2d map a code back to in_size."""
    return in_size - ((out_size - 1) * stride - 2 * padding + kernel)


# On the CPU, convolutions with few input channels (the stem: 3 x k x k
# patches) are 1.5-3x faster as unfold + matrix product than through oneDNN,
# whose direct kernels pay a layout reorder for NCHW tensors.  Larger patches
# (the -all models' 3x3 layers on 64+ channels) and GPUs use the library.
GEMM_MAX_PATCH = 160


def _use_gemm(t: Tensor, weight: Tensor) -> bool:
    patch = weight.shape[1] * weight.shape[2] * weight.shape[3]
    channels_last = t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
    return t.device.type == "cpu" and patch <= GEMM_MAX_PATCH and not channels_last


# The solver keeps codes in one of two layouts: (B, C, H', W') for torch's
# convolutions, or flat (B, C, H'*W') on the matrix-product path.  Flat codes
# are never views, so in-place ops on them are safe under autograd (in-place
# ops on a view make autograd copy the whole base tensor back: CopySlices).


def _synthesis_op(z: Tensor, weight: Tensor, stride: int, padding: int, x_size: tuple[int, int]) -> Tensor:
    """A z for a code in either layout; returns an image (B, C_in, H, W)."""
    k = weight.shape[-1]
    if z.dim() == 3:
        w = weight.flatten(1).t()  # (C_in*k*k, C_out)
        # bmm over an expanded weight: torch.matmul(2-D, 3-D) transposes and copies code-sized tensors
        cols = torch.bmm(w.expand(z.shape[0], *w.shape), z)  # (B, C_in*k*k, H'*W')
        return F.fold(cols, x_size, k, padding=padding, stride=stride)
    op = (
        output_padding_for(x_size[0], z.shape[-2], k, stride, padding),
        output_padding_for(x_size[1], z.shape[-1], k, stride, padding),
    )
    return F.conv_transpose2d(z, weight, stride=stride, padding=padding, output_padding=op)


def _analysis_op(x: Tensor, weight: Tensor, stride: int, padding: int, bias: Tensor | None, flat: bool) -> Tensor:
    """A^T x + bias, as a flat (B, C_out, H'*W') code when flat, else 4-D."""
    if flat:
        cols = F.unfold(x, weight.shape[-1], padding=padding, stride=stride)  # (B, C_in*k*k, H'*W')
        atoms = weight.flatten(1)
        out = torch.bmm(atoms.expand(x.shape[0], *atoms.shape), cols)
        return out if bias is None else out.add_(bias.view(1, -1, 1))
    return F.conv2d(x, weight, bias, stride=stride, padding=padding)


def synthesis(z: Tensor, weight: Tensor, stride: int, padding: int, x_size: tuple[int, int]) -> Tensor:
    """A z: the image that the code z (B, C_out, H', W') synthesises (conv_transpose2d)."""
    if _use_gemm(z, weight):
        return _synthesis_op(z.flatten(2), weight, stride, padding, x_size)
    return _synthesis_op(z, weight, stride, padding, x_size)


def analysis(x: Tensor, weight: Tensor, stride: int, padding: int, bias: Tensor | None = None) -> Tensor:
    """A^T x (+ bias per channel): the adjoint of synthesis (conv2d)."""
    flat = _use_gemm(x, weight)
    out = _analysis_op(x, weight, stride, padding, bias, flat)
    if flat:
        h, w = code_size((x.shape[-2], x.shape[-1]), weight.shape[-1], stride, padding)
        out = out.view(x.shape[0], weight.shape[0], h, w)
    return out


def code_size(x_size: tuple[int, int], kernel: int, stride: int, padding: int) -> tuple[int, int]:
    return tuple((s + 2 * padding - kernel) // stride + 1 for s in x_size)  # type: ignore[return-value]


@torch.no_grad()
def power_iteration(
    weight: Tensor,
    x_size: tuple[int, int],
    stride: int,
    padding: int,
    v0: Tensor | None = None,
    max_iter: int = 50,
    tol: float | None = 1e-5,
) -> tuple[Tensor, Tensor]:
    """Largest eigenvalue L of A^T A and its eigenvector, by power iteration.

    Returns (L as a 0-dim tensor, unit vector).  With tol=None it runs exactly
    max_iter iterations and never synchronises with the device.
    """
    c_out, k = weight.shape[0], weight.shape[-1]
    h, w = code_size(x_size, k, stride, padding)
    if v0 is None:
        gen = torch.Generator(device="cpu").manual_seed(0)  # reproducible start
        v0 = torch.randn(1, c_out, h, w, generator=gen, dtype=weight.dtype).to(weight.device)
    v = v0 / v0.norm().clamp_min(1e-30)
    lipschitz = torch.zeros((), dtype=weight.dtype, device=weight.device)
    for _ in range(max_iter):
        av = synthesis(v, weight, stride, padding, x_size)
        new_lipschitz = av.pow(2).sum()  # Rayleigh quotient v^T A^T A v, v unit
        v = analysis(av, weight, stride, padding)
        v = v / v.norm().clamp_min(1e-30)
        if tol is not None and abs(new_lipschitz.item() - lipschitz.item()) <= tol * new_lipschitz.item():
            lipschitz = new_lipschitz
            break
        lipschitz = new_lipschitz
    return lipschitz, v


def _prox_(v: Tensor, threshold: LambdaValue | None, non_negative: bool) -> Tensor:
    """Soft-thresholding (then ReLU when non-negative), in place where possible.

    threshold None means it was already subtracted through the conv bias
    (non-negative case only).  In place because on the CPU a fresh code-sized
    buffer costs page faults; v is never a view, so autograd allows it.
    """
    if non_negative:
        if threshold is not None:
            v = v.sub_(threshold)
        return v.relu_()
    if isinstance(threshold, Tensor):  # per-sample: softshrink takes only a float
        return v - v.clamp(-threshold, threshold)
    return F.softshrink(v, float(threshold))


def csc_encode(
    x: Tensor,
    weight: Tensor,
    step_size: Tensor | float,
    lam: LambdaValue,
    *,
    stride: int = 1,
    padding: int = 0,
    n_steps: int = 2,
    non_negative: bool = True,
    mu: float = 0.0,
    iteration: str = "official",
) -> Tensor:
    """Unrolled proximal gradient for the CSC problem, differentiable by autograd.

    weight is used as given (normalise it first); step_size is eta (no gradient
    flows into it).  lam is a float or a per-sample tensor of shape (B,).

    iteration: "official" evaluates the gradient at the current code and adds
    Nesterov momentum from the third step (what SDNet checkpoints were trained
    with); "fista" is true FISTA (gradient at the extrapolated point); "ista"
    has no momentum (the objective never rises).
    """
    if iteration not in ITERATIONS:
        raise RobustCSCError(f"unknown CSC iteration {iteration!r}; use one of {', '.join(ITERATIONS)}")
    x_size = (x.shape[-2], x.shape[-1])
    flat = _use_gemm(x, weight)
    eta = step_size
    # prox of the elastic net: shrink * softshrink(v, lam * eta), shrink = 1 / (1 + mu * eta)
    shrink = 1.0 / (1.0 + mu * eta) if mu else 1.0
    w_step = weight * (eta * shrink)  # folds eta and the scaling into the conv
    bias = None
    if isinstance(lam, Tensor):
        # one threshold per sample, broadcast over the code's layout
        per_sample = (lam * (eta * shrink)).to(x.dtype)
        threshold = per_sample.view(-1, 1, 1) if flat else per_sample.view(-1, 1, 1, 1)
    else:
        threshold = lam * eta * shrink
        if non_negative:
            # relu(conv(x) - t) == relu(conv(x, bias=-t)): the bias add is free in the conv
            t = threshold if isinstance(threshold, Tensor) else torch.tensor(threshold, dtype=weight.dtype)
            bias = (-t).to(device=x.device, dtype=weight.dtype).expand(weight.shape[0])
    rest = None if bias is not None else threshold

    z = _prox_(_analysis_op(x, w_step, stride, padding, bias, flat), rest, non_negative)
    z_prev = None
    t_momentum = 1.0
    for k in range(1, n_steps):
        if k >= 2 and iteration != "ista":
            t_next = (1.0 + math.sqrt(1.0 + 4.0 * t_momentum * t_momentum)) / 2.0
            y = z + ((t_momentum - 1.0) / t_next) * (z - z_prev)
            t_momentum = t_next
        else:
            y = z
            if k == 1:
                t_momentum = (1.0 + math.sqrt(5.0)) / 2.0
        grad_point = y if iteration == "fista" else z
        residual = x - _synthesis_op(grad_point, weight, stride, padding, x_size)
        v = _analysis_op(residual, w_step, stride, padding, bias, flat)
        v = v.add_(y * shrink if (isinstance(shrink, Tensor) or shrink != 1.0) else y)
        z_prev = z
        z = _prox_(v, rest, non_negative)
    if flat:
        z = z.view(x.shape[0], weight.shape[0], *code_size(x_size, weight.shape[-1], stride, padding))
    return z


def csc_objective(
    x: Tensor, z: Tensor, weight: Tensor, lam: LambdaValue, *, stride: int = 1, padding: int = 0, mu: float = 0.0
) -> Tensor:
    """Per-sample objective lam*|z|_1 + mu/2*|z|^2 + 1/2*|x - A z|^2."""
    residual = x - synthesis(z, weight, stride, padding, (x.shape[-2], x.shape[-1]))
    lam_t = lam.view(-1) if isinstance(lam, Tensor) else lam
    return (
        lam_t * z.abs().flatten(1).sum(1)
        + 0.5 * mu * z.pow(2).flatten(1).sum(1)
        + 0.5 * residual.pow(2).flatten(1).sum(1)
    )


# ----------------------------------------------------------------------------
# The layer
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CSCStats:
    """Per-sample statistics of a layer's last forward pass (detached)."""

    recon_error: Tensor  # ||x - A z||^2 per sample, shape (B,)
    code_density: Tensor  # fraction of non-zero code entries per sample, shape (B,)


def check_lambda(value: LambdaValue) -> LambdaValue:
    """Validate a lambda value: a finite float >= 0 or a 1-D tensor of them."""
    if isinstance(value, Tensor):
        if value.dim() != 1:
            raise RobustCSCError(
                f"a per-sample lambda must be a 1-D tensor of shape (batch,), got shape {tuple(value.shape)}; "
                "pass one value per image"
            )
        bad = ~torch.isfinite(value) | (value < 0) | (value > MAX_LAMBDA)
        if bool(bad.any()):
            raise RobustCSCError(
                f"every lambda must be a finite number from 0 to {MAX_LAMBDA:g}; fix the per-sample lambda tensor"
            )
        return value.detach()
    if isinstance(value, (str, bytes, bool)):
        raise RobustCSCError(f"lambda must be a number, got {value!r}; pass e.g. 0.1")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RobustCSCError(f"lambda must be a number, got {value!r}; pass e.g. 0.1") from None
    if not math.isfinite(number) or number < 0:
        raise RobustCSCError(f"lambda must be a finite number >= 0, got {value!r}; pass e.g. 0.1")
    if number > MAX_LAMBDA:
        raise RobustCSCError(f"lambda {value!r} is absurdly large (it zeroes every code); pass a number from 0 to {MAX_LAMBDA:g}")
    return number


def _pair(value, name: str) -> int:
    if isinstance(value, (tuple, list)):
        if len(value) != 2 or value[0] != value[1]:
            raise RobustCSCError(f"CSCConv2d supports only square {name}s, got {value}; pass a single int")
        value = value[0]
    return int(value)


class CSCConv2d(nn.Module):
    """Convolutional sparse coding: a drop-in replacement for nn.Conv2d.

    The dictionary ``weight`` has nn.Conv2d's shape (C_out, C_in, k, k); its
    atoms are normalised to unit norm in every forward pass (differentiably;
    the parameter itself is never modified).  The step size comes from power
    iteration: warm-started and refreshed every training step, cached in eval
    mode until the weight changes (no power iteration, no host sync per batch).

    lam is state: a float, or a per-sample tensor of shape (B,) set with
    ``set_lambda``.  With ``record_stats`` on, ``last_stats`` holds per-sample
    reconstruction error and code density of the last forward pass.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        bias: bool = False,
        *,
        lam: float = 0.1,
        n_steps: int = 2,
        non_negative: bool = True,
        mu: float = 0.0,
        iteration: str = "official",
        power_iters: int = 200,
        power_tol: float = 1e-7,
        train_power_iters: int = 2,
    ) -> None:
        super().__init__()
        if bias:
            raise RobustCSCError("CSCConv2d has no bias (a sparse code has none); pass bias=False")
        if iteration not in ITERATIONS:
            raise RobustCSCError(f"unknown CSC iteration {iteration!r}; use one of {', '.join(ITERATIONS)}")
        if n_steps < 1:
            raise RobustCSCError(f"n_steps must be >= 1, got {n_steps}; pass e.g. 2")
        if mu < 0 or not math.isfinite(mu):
            raise RobustCSCError(f"mu must be a finite number >= 0, got {mu}; pass e.g. 0.0")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size, "kernel")
        self.stride = _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        if self.stride < 1:
            raise RobustCSCError(f"stride must be >= 1, got {stride}")
        self.n_steps = int(n_steps)
        self.non_negative = bool(non_negative)
        self.mu = float(mu)
        self.iteration = iteration
        self.power_iters = int(power_iters)
        self.power_tol = float(power_tol)
        self.train_power_iters = int(train_power_iters)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, self.kernel_size, self.kernel_size))
        self.lam: LambdaValue = check_lambda(lam)
        self.record_stats = False
        # None: statistics of every row; a slice: of those rows only (the lambda sweep
        # needs the stem's statistics at one of the K lambdas its batch carries).
        self.stats_rows: slice | None = None
        self.last_stats: CSCStats | None = None
        # Not state: the power-iteration vectors per input size, and the eval-mode cache.
        self._power_vectors: dict[tuple, Tensor] = {}
        self._eval_step: dict[tuple, Tensor] = {}
        self._eval_snapshot: Tensor | None = None
        self.power_iteration_count = 0  # how many times power iteration ran (tests read it)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def extra_repr(self) -> str:
        lam = f"per-sample[{self.lam.numel()}]" if isinstance(self.lam, Tensor) else f"{self.lam:g}"
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, lam={lam}, n_steps={self.n_steps}, non_negative={self.non_negative}, "
            f"mu={self.mu:g}, iteration={self.iteration}"
        )

    # -- the dictionary and the step size ---------------------------------

    def dictionary(self) -> Tensor:
        """The normalised dictionary the layer codes with (differentiable)."""
        return normalize_atoms(self.weight)

    def step_size(self, x_size: tuple[int, int], weight: Tensor | None = None) -> Tensor:
        """eta = 0.9 / L for an input of spatial size x_size (0-dim tensor, no grad)."""
        if weight is None:
            weight = self.dictionary()
        weight = weight.detach()
        shape_key = (x_size, weight.device, weight.dtype)
        if not self.training:
            key = (shape_key, self.weight._version, self.weight.data_ptr())
            cached = self._eval_step.get(key)
            if cached is not None and self._snapshot_matches(weight):
                return cached
        # Training warm-starts from the last vector (a few iterations, no host
        # sync).  Evaluation always starts from the same seeded vector and runs
        # to convergence, so the step size is a function of the weights alone
        # and a model gives the same outputs whatever ran before.
        warm = self.training and shape_key in self._power_vectors
        with torch.autocast(weight.device.type, enabled=False):  # L in full precision under mixed precision
            lipschitz, v = power_iteration(
                weight,
                x_size,
                self.stride,
                self.padding,
                v0=self._power_vectors[shape_key] if warm else None,
                max_iter=self.train_power_iters if warm else self.power_iters,
                tol=None if warm else self.power_tol,
            )
        self.power_iteration_count += 1
        self._power_vectors[shape_key] = v
        eta = STEP_SIZE_MARGIN / lipschitz.clamp_min(1e-12)
        if not self.training:
            self._eval_step = {key: eta}  # one entry: the current weight and input size
            self._eval_snapshot = weight.clone() if weight.device.type == "cpu" else None
        return eta

    def _snapshot_matches(self, weight: Tensor) -> bool:
        """Whether the dictionary is the one the cached step size was computed for.

        The version counter sees optimizer steps and load_state_dict, but not
        writes through ``weight.data``.  On the CPU a comparison with a snapshot
        of the (small) dictionary costs nothing, so it is done; on a GPU it
        would synchronise every batch, so there call ``reset_step_size()``
        after writing through ``.data``.
        """
        snapshot = self._eval_snapshot
        return snapshot is None or torch.equal(snapshot, weight)

    def solver_state(self) -> list:
        """The power-iteration warm starts as plain values (resumable training needs them)."""
        return [
            [size[0], size[1], str(dtype).replace("torch.", ""), vector.detach().cpu()]
            for (size, _device, dtype), vector in self._power_vectors.items()
        ]

    def load_solver_state(self, state: list) -> None:
        """Restore what solver_state() returned."""
        device = self.weight.device
        self._power_vectors = {
            ((int(h), int(w)), device, getattr(torch, dtype)): vector.to(device) for h, w, dtype, vector in state
        }

    def reset_step_size(self) -> None:
        """Forget the cached step size (needed only after writes through weight.data on a GPU)."""
        self._eval_step = {}
        self._eval_snapshot = None

    def train(self, mode: bool = True) -> "CSCConv2d":
        # Weights may have changed while in the other mode. Calling eval() on a model
        # already in eval mode (torchattacks does, on every attack call) keeps the cache.
        if mode != self.training:
            self.reset_step_size()
        return super().train(mode)

    def lipschitz(self, x_size: tuple[int, int]) -> float:
        """||A||^2 for an input of size x_size, converged (for inspection and tests)."""
        lipschitz, _ = power_iteration(
            self.dictionary().detach(), x_size, self.stride, self.padding, max_iter=1000, tol=1e-10
        )
        return float(lipschitz)

    # -- forward -----------------------------------------------------------

    def _lambda_for(self, batch: int) -> LambdaValue:
        lam = self.lam
        if isinstance(lam, Tensor) and lam.numel() != batch:
            raise RobustCSCError(
                f"per-sample lambda has {lam.numel()} values but the batch has {batch} images; "
                "set one lambda per image or a single float"
            )
        return lam

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise RobustCSCError(
                f"CSCConv2d expects input of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        x_size = (x.shape[-2], x.shape[-1])
        weight = self.dictionary()
        eta = self.step_size(x_size, weight)
        lam = self._lambda_for(x.shape[0])
        if isinstance(lam, Tensor):
            lam = lam.to(device=x.device, dtype=eta.dtype)
        if not self.non_negative and not isinstance(lam, Tensor):
            eta = float(eta)  # softshrink takes a Python float threshold
        z = csc_encode(
            x,
            weight,
            eta,
            lam,
            stride=self.stride,
            padding=self.padding,
            n_steps=self.n_steps,
            non_negative=self.non_negative,
            mu=self.mu,
            iteration=self.iteration,
        )
        if self.record_stats:
            rows = self.stats_rows
            self.last_stats = self._stats(x, z, weight) if rows is None else self._stats(x[rows], z[rows], weight)
        return z

    @torch.no_grad()
    def _stats(self, x: Tensor, z: Tensor, weight: Tensor) -> CSCStats:
        recon = synthesis(z.to(weight.dtype), weight, self.stride, self.padding, (x.shape[-2], x.shape[-1]))
        # In place and fused reductions: no more code- or image-sized temporaries than needed.
        residual = recon.sub_(x.to(recon.dtype)).flatten(1)
        error = torch.linalg.vector_norm(residual, dim=1).square()
        codes = z.flatten(1)
        # Non-zeros counted as a float sum of |sign|: exact (0/1 values, row sums far below 2**24) and
        # ~4x faster on the CPU than count_nonzero, whose bool-to-int64 reduction took 60% of the
        # synthesis' time above (sdnet18 width 16, 256 images). A NaN code gives a NaN density.
        ones = codes.sign() if self.non_negative else codes.sign().abs_()
        density = ones.sum(dim=1, dtype=torch.float32) / max(codes.shape[1], 1)
        return CSCStats(recon_error=error.float(), code_density=density)


# ----------------------------------------------------------------------------
# Lambda controls for any model
# ----------------------------------------------------------------------------


def csc_layers(model: nn.Module) -> dict[str, CSCConv2d]:
    """The CSC layers of a model by qualified name, in definition order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, CSCConv2d)}


def select_csc_layers(model: nn.Module, layers: str | Sequence[str] | None = None) -> dict[str, CSCConv2d]:
    """Select CSC layers: None or "all", "stem" (the first CSC layer), or names / glob patterns."""
    found = csc_layers(model)
    if not found:
        raise RobustCSCError(
            f"{type(model).__name__} has no CSC layers; use an SDNet model (e.g. sdnet18) for lambda control"
        )
    if layers is None or layers == "all":
        return found
    if layers == "stem":
        first = next(iter(found))
        return {first: found[first]}
    patterns = [layers] if isinstance(layers, str) else list(layers)
    chosen = {n: m for n, m in found.items() if any(fnmatch.fnmatchcase(n, p) for p in patterns)}
    if not chosen:
        raise RobustCSCError(
            f"layer selection {patterns} matches no CSC layer; choose from 'all', 'stem' or {list(found)}"
        )
    return chosen


def set_lambda(
    model: nn.Module, value: LambdaValue | Mapping[str, LambdaValue], layers: str | Sequence[str] | None = None
) -> None:
    """Set lambda of the chosen CSC layers (all by default).

    value: a float, a per-sample tensor of shape (B,), or a mapping from layer
    name to value (then ``layers`` is ignored).
    """
    if isinstance(value, Mapping):
        found = csc_layers(model)
        unknown = [name for name in value if name not in found]
        if unknown:
            raise RobustCSCError(f"no CSC layer named {unknown}; choose from {list(found)}")
        checked = {name: check_lambda(v) for name, v in value.items()}  # validate all before changing any
        for name, v in checked.items():
            found[name].lam = v
        return
    checked = check_lambda(value)
    for layer in select_csc_layers(model, layers).values():
        layer.lam = checked


def get_lambda(model: nn.Module) -> dict[str, LambdaValue]:
    """The current lambda of every CSC layer."""
    return {name: layer.lam for name, layer in csc_layers(model).items()}


@contextlib.contextmanager
def lambda_override(
    model: nn.Module, value: LambdaValue | Mapping[str, LambdaValue], layers: str | Sequence[str] | None = None
) -> Iterator[None]:
    """Temporarily set lambda; the previous values come back on exit, even on error."""
    saved = get_lambda(model)
    set_lambda(model, value, layers)
    try:
        yield
    finally:
        for name, layer in csc_layers(model).items():
            layer.lam = saved[name]


@contextlib.contextmanager
def record_stats(
    model: nn.Module, layers: str | Sequence[str] | None = None, rows: slice | None = None
) -> Iterator[dict[str, CSCConv2d]]:
    """Record per-sample reconstruction error and code density while inside.

    Yields the selected layers; read ``layer.last_stats`` after a forward pass.
    rows: record only these rows of each batch (``layer.stats_rows`` may also
    be changed per batch while inside); None records every row.
    """
    if rows is not None and not isinstance(rows, slice):
        raise RobustCSCError(
            f"rows must be a slice of the batch or None, got {type(rows).__name__}; pass e.g. slice(0, 8)"
        )
    chosen = select_csc_layers(model, layers)
    before = {name: (layer.record_stats, layer.stats_rows) for name, layer in chosen.items()}
    for layer in chosen.values():
        layer.record_stats = True
        layer.stats_rows = rows
    try:
        yield chosen
    finally:
        for name, layer in chosen.items():
            layer.record_stats, layer.stats_rows = before[name]
