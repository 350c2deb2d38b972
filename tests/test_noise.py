"""Tests for robust_csc.corruptions.noise: batched, counter-seeded pixel noise in torch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

from robust_csc.corruptions import add_noise, corrupt_image, noise_level
from robust_csc.corruptions import counter_rng, poisson
from robust_csc.corruptions import noise as noise_module
from robust_csc.errors import RobustCSCError

KINDS = ("gaussian", "shot", "impulse", "speckle")
LEVELS = {"gaussian": 0.1, "shot": 30.0, "impulse": 0.1, "speckle": 0.2}


def _rel_std_tolerance(n: int, k: float = 6.0) -> float:
    # The sample std of n normal values has relative standard error ~ 1/sqrt(2n).
    return k / math.sqrt(2 * n)


def _stat_batch(value: float) -> torch.Tensor:
    # 4 images of 3x128x128: 196608 values.
    return torch.full((4, 3, 128, 128), value, dtype=torch.float64)


def _photos(n: int = 6, shape=(3, 16, 16)) -> torch.Tensor:
    return torch.rand((n, *shape), generator=torch.Generator().manual_seed(0))


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kind, level",
    [
        ("gaussian", -0.1),
        ("speckle", -1e-3),
        ("shot", -5.0),
        ("shot", 0.0),
        ("shot", 2e6),
        ("impulse", 0.0),
        ("impulse", 1.5),
        ("impulse", -0.2),
        ("gaussian", float("nan")),
        ("gaussian", float("inf")),
        ("gaussian", True),
        ("poisson", 0.1),
    ],
)
def test_rejects_bad_levels(kind, level):
    with pytest.raises(RobustCSCError):
        add_noise(torch.full((1, 3, 8, 8), 0.5), kind, level, seed=0, indices=[0])


def test_rejects_bad_batches_indices_and_seeds():
    x = torch.full((2, 3, 4, 4), 0.5)
    with pytest.raises(RobustCSCError, match="indices"):
        add_noise(x, "gaussian", 0.1, seed=0, indices=[0])
    with pytest.raises(RobustCSCError, match="float tensor"):
        add_noise(x.to(torch.uint8), "gaussian", 0.1, seed=0, indices=[0, 1])
    with pytest.raises(RobustCSCError, match="float tensor"):
        add_noise(x[0], "gaussian", 0.1, seed=0, indices=[0, 1])
    for bad in ([0.0, 1.0], torch.tensor([0.0, 1.0]), np.array([0.5, 1.0]), [True, False], [-1, 0], torch.tensor([0, -3])):
        with pytest.raises(RobustCSCError, match="integers|non-negative"):
            add_noise(x, "gaussian", 0.1, seed=0, indices=bad)
    with pytest.raises(RobustCSCError, match="seed"):
        add_noise(x, "gaussian", 0.1, seed=-1, indices=[0, 1])
    # Every integer container gives the same result.
    out = add_noise(x, "gaussian", 0.1, seed=0, indices=[3, 4])
    for same in (np.array([3, 4]), torch.tensor([3, 4], dtype=torch.int32), range(3, 5)):
        assert torch.equal(out, add_noise(x, "gaussian", 0.1, seed=0, indices=same))


# --------------------------------------------------------------------------- statistics against the parameter


@pytest.mark.parametrize("sigma", [0.021, 0.05, 0.13])
def test_gaussian_std_and_normality(sigma, one_thread):
    x = _stat_batch(0.5)  # clipping needs |z| > 3.8 sigma at sigma 0.13: negligible
    y = add_noise(x, "gaussian", sigma, seed=3, indices=[0, 1, 2, 3])
    assert y.min() >= 0 and y.max() <= 1
    z = ((y - x) / sigma).flatten().numpy()
    assert abs(z.std() - 1) < _rel_std_tolerance(z.size)
    assert abs(z.mean()) < 6 / math.sqrt(z.size)
    assert scipy.stats.kstest(z, "norm").pvalue > 1e-3


def test_gaussian_matches_the_cifar_definition_at_the_published_level(one_thread):
    # Same definition and parameter as the numpy cifar profile (not the same draws).
    sigma = noise_level("gaussian_noise", 3)
    grey = 128
    x = _stat_batch(grey / 255)
    y = add_noise(x, "gaussian", sigma, seed=0, indices=[0, 1, 2, 3])
    out = corrupt_image(np.full((256, 256, 3), grey, dtype=np.uint8), "gaussian_noise", 3, rng=np.random.default_rng(0))
    numpy_std = (out.astype(np.float64) - grey).std() / 255
    assert abs((y - x).std().item() - numpy_std) < 0.02 * sigma


@pytest.mark.parametrize("c", [0.05, 0.27])
def test_speckle_multiplicative_std(c, one_thread):
    for value in (0.5, 0.25):
        x = _stat_batch(value)
        y = add_noise(x, "speckle", c, seed=3, indices=[0, 1, 2, 3])
        measured = (y - x).std().item()
        assert abs(measured / (value * c) - 1) < _rel_std_tolerance(x.numel())


@pytest.mark.parametrize("amount", [0.015, 0.37, 1.0])
def test_impulse_salt_and_pepper_fractions(amount, one_thread):
    x = _stat_batch(0.5)
    y = add_noise(x, "impulse", amount, seed=3, indices=[0, 1, 2, 3])
    changed = y != x
    n = x.numel()
    assert abs(changed.double().mean().item() - amount) < 5 * math.sqrt(amount * (1 - amount) / n) + 1e-12
    assert torch.all((y[changed] == 0) | (y[changed] == 1))
    salt = (y[changed] == 1).double().mean().item()
    assert abs(salt - 0.5) < 5 * math.sqrt(0.25 / changed.sum().item())


@pytest.mark.parametrize("c", [20.0, 137.5, 1000.0])
def test_shot_mean_and_variance(c, one_thread):
    value = 0.25  # poisson(0.25 c) exceeds c (clip) with negligible probability
    x = _stat_batch(value)
    y = add_noise(x, "shot", c, seed=3, indices=[0, 1, 2, 3])
    n = x.numel()
    assert abs(y.var().item() / (value / c) - 1) < 6 * math.sqrt(2 / n) + 0.01
    assert abs(y.mean().item() - value) < 6 * math.sqrt(value / c / n)


def _poisson_counts(lam: float, n_images: int = 4) -> np.ndarray:
    """Shot-noise counts at rate lam: a constant image x = lam / c with c = 10 lam (clipping never binds)."""
    c = 10.0 * lam
    x = torch.full((n_images, 3, 64, 64), lam / c, dtype=torch.float64)
    y = add_noise(x, "shot", c, seed=11, indices=range(n_images))
    counts = torch.round(y * c).flatten().numpy()
    assert np.allclose(counts, y.flatten().numpy() * c)  # whole counts
    return counts.astype(np.int64)


# Below 10: the inversion sampler; from 10: PTRS; 9.99 and 10 straddle the switch.
@pytest.mark.parametrize("lam", [0.3, 2.5, 9.99, 10.0, 37.5, 420.0])
def test_shot_counts_follow_the_poisson_distribution(lam, one_thread):
    counts = _poisson_counts(lam)
    dist = scipy.stats.poisson(lam)
    # Bins with >= 20 expected counts; the two tails lumped into the end bins.
    lo, hi = int(dist.ppf(1e-3)), int(dist.isf(1e-3))
    edges = np.arange(lo, hi + 1)
    observed = np.array([(counts <= lo).sum(), *[(counts == k).sum() for k in edges[1:-1]], (counts >= hi).sum()])
    expected = np.array([dist.cdf(lo), *dist.pmf(edges[1:-1]), dist.sf(hi - 1)]) * counts.size
    assert observed.sum() == counts.size
    assert scipy.stats.chisquare(observed, expected).pvalue > 1e-3
    assert abs(counts.mean() - lam) < 6 * math.sqrt(lam / counts.size)


def test_shot_fused_kernel_and_its_finish_equal_the_eager_sampler(one_thread):
    # The compiled path's math (fixed work per value, -1 where undecided, then the
    # exact finish) run eagerly here: it must give the eager sampler's very counts.
    x = torch.rand((5, 3, 24, 24), generator=torch.Generator().manual_seed(4)).reshape(5, -1)
    index, words = torch.arange(5).view(-1, 1), counter_rng.seed_tensor(0, "shot", torch.device("cpu"))
    k1, k2 = counter_rng.image_keys(index, words)
    undecided = 0
    for level in (3.0, 14.0, 60.0, 500.0):
        level_t = torch.tensor(level)
        bulk = noise_module._shot_kernel(x, k1, k2, level_t)
        undecided += int((bulk < 0).sum())
        noise_module._finish_shot(bulk, x, index, words, level)
        assert torch.equal(bulk, noise_module._shot_eager(x, k1, k2, level_t))
    assert undecided > 0  # the finish had work to do


def test_int32_hash_equals_lowbias32_on_python_ints(one_thread):
    # The tensor hash works on int32 with wrapping products and masked shifts;
    # it must give lowbias32's bits, computed here from its definition on Python ints.
    def lowbias32(w):
        w ^= w >> 16
        w = (w * 0x21F0AAAD) % 2**32
        w ^= w >> 15
        w = (w * 0x735A2D97) % 2**32
        return w ^ (w >> 15)

    words = [0, 1, 2, 0x7FFFFFFF, 0x80000000, 0xDEADBEEF, 0xFFFFFFFF] + list(
        np.random.default_rng(0).integers(0, 2**32, 500, dtype=np.uint64)
    )
    as_int32 = torch.tensor([int(w) - 2**32 if w >= 2**31 else int(w) for w in words], dtype=torch.int32)
    expected = [lowbias32(int(w)) for w in words]
    got = [int(h) % 2**32 for h in counter_rng.mix(as_int32)]
    assert got == expected
    compiled = torch.compile(counter_rng.mix, dynamic=False, fullgraph=True)
    assert torch.equal(compiled(as_int32), counter_rng.mix(as_int32))


def _grid_images(n: int, shape=(3, 32, 32), seed: int = 0) -> torch.Tensor:
    """8-bit images as read from files: every value is q / 255 in float32."""
    q = torch.randint(0, 256, (n, *shape), generator=torch.Generator().manual_seed(seed))
    return q.float() / 255


@pytest.mark.parametrize("c", [3.0, 12.0, 60.0, 500.0, 2000.0])
def test_shot_on_8bit_images_follows_the_poisson_distribution(c, one_thread):
    # 8-bit inputs take the table sampler: per gray level q, counts ~ Poisson(c q / 255).
    table = poisson.poisson_table(c, torch.device("cpu"))
    assert table.usable
    x = _grid_images(16, (3, 64, 64))
    y = add_noise(x, "shot", c, seed=5, indices=range(16))
    counts = torch.round(y * c).flatten().numpy().astype(np.int64)
    q = torch.round(x * 255).flatten().numpy().astype(np.int64)
    unclipped = (y < 1).flatten().numpy()
    for level in (40, 128, 255):
        lam = c * level / 255
        dist = scipy.stats.poisson(lam)
        got = counts[q == level]
        # Values at 1 were clipped (count >= c): compare the distribution below c.
        got = got[unclipped[q == level]]
        lo, hi = int(dist.ppf(1e-3)), min(int(dist.isf(1e-3)), int(math.ceil(c)) - 1)
        if hi - lo < 2:
            continue
        edges = np.arange(lo, hi + 1)
        observed = np.array([(got <= lo).sum(), *[(got == k).sum() for k in edges[1:-1]], (got >= hi).sum()])
        mass = dist.cdf(math.ceil(c) - 1)  # the unclipped part
        expected = np.array([dist.cdf(lo), *dist.pmf(edges[1:-1]), dist.cdf(math.ceil(c) - 1) - dist.cdf(hi - 1)])
        expected = expected / mass * observed.sum()
        assert scipy.stats.chisquare(observed, expected).pvalue > 1e-4, (c, level)


def test_table_counts_equal_inversion_by_brute_force(one_thread):
    # The guide (start + one or two comparisons) must give exactly the inverse CDF,
    # counted here over whole rows: #{j: F(j) < u} below 1/2, #{j: S(j) > 1 - u} above.
    rng = np.random.default_rng(1)
    for c in (0.7, 12.0, 333.0, 2000.0):
        table = poisson.PoissonTable(c, torch.device("cpu"))
        q = rng.integers(0, 256, 5000)
        u = (rng.integers(0, 2**23, 5000) * 2 + 1) / 2**24
        u[:6] = [2**-24, 1 - 2**-24, 0.5 - 2**-24, 0.5 + 2**-24, 3 * 2**-24, 1 - 3 * 2**-24]  # the extremes
        q[:6] = 255
        got = poisson.table_counts(
            torch.tensor(q, dtype=torch.int32), torch.tensor(u, dtype=torch.float32), table.packed, table.extra
        ).numpy()
        ks = np.arange(int(c + 8 * math.sqrt(c) + 16) + 1)
        expected = []
        for qi, ui in zip(q, u.astype(np.float32)):
            lam = c * qi / 255
            if ui < 0.5:
                expected.append((scipy.stats.poisson.cdf(ks, lam).astype(np.float32) < ui).sum())
            else:
                expected.append((scipy.stats.poisson.sf(ks, lam).astype(np.float32) > np.float32(1) - ui).sum())
        assert np.array_equal(got, np.array(expected, dtype=np.float32)), c


def test_shot_mixes_8bit_and_other_images_per_element(one_thread):
    # Off-grid values take PTRS, on-grid values the table: an image's noise is the
    # same alone or beside images of the other kind, eager or compiled.
    grid, off = _grid_images(3, (3, 8, 8)), _photos(3, (3, 8, 8))
    mixed = torch.cat([grid, off])
    whole = add_noise(mixed, "shot", 40.0, 3, range(6))
    alone = torch.cat([add_noise(grid, "shot", 40.0, 3, range(3)), add_noise(off, "shot", 40.0, 3, range(3, 6))])
    assert torch.equal(whole, alone)
    assert torch.equal(add_noise(mixed, "shot", 40.0, 3, range(6), compiled=True), whole)


# --------------------------------------------------------------------------- determinism per image


@pytest.mark.parametrize("kind", KINDS)
def test_independent_of_batching_order_and_chunking(kind, one_thread, monkeypatch):
    x = _photos(6, (3, 5, 5))  # 75 values: odd, so the unpaired Box-Muller value is covered
    level = LEVELS[kind]
    indices = [10, 11, 12, 13, 14, 15]
    whole = add_noise(x, kind, level, seed=7, indices=torch.tensor(indices))
    assert whole.shape == x.shape and whole.dtype == x.dtype and whole.device == x.device
    assert whole.min() >= 0 and whole.max() <= 1
    parts = torch.cat([add_noise(x[:2], kind, level, 7, indices[:2]), add_noise(x[2:], kind, level, 7, indices[2:])])
    assert torch.equal(whole, parts)
    perm = [4, 0, 5, 2, 1, 3]
    shuffled = add_noise(x[perm], kind, level, 7, [indices[p] for p in perm])
    assert torch.equal(shuffled, whole[perm])
    single = torch.cat([add_noise(x[i : i + 1], kind, level, 7, [indices[i]]) for i in range(6)])
    assert torch.equal(single, whole)
    monkeypatch.setattr(noise_module, "_EAGER_CHUNK", 80)  # one image per eager chunk
    assert torch.equal(add_noise(x, kind, level, 7, indices), whole)
    assert not torch.equal(add_noise(x, kind, level, 8, indices), whole)  # the seed matters
    assert not torch.equal(x, whole)


@pytest.mark.parametrize("kind", KINDS)
def test_different_images_get_different_noise(kind, one_thread):
    x = torch.full((3, 3, 32, 32), 0.5)
    level = LEVELS[kind]
    y = add_noise(x, kind, level, seed=0, indices=[0, 1, 2**40 + 1])  # indices beyond 32 bits too
    noise = (y - x).reshape(3, -1)
    for a, b in ((0, 1), (0, 2), (1, 2)):
        assert not torch.equal(noise[a], noise[b])
        r = np.corrcoef(noise[a].numpy(), noise[b].numpy())[0, 1]
        assert abs(r) < 6 / math.sqrt(noise.shape[1])
    # The same image index under another noise kind draws other uniforms.
    other = "gaussian" if kind != "gaussian" else "speckle"
    assert not torch.equal(add_noise(x, other, LEVELS[other], 0, [0, 1, 2**40 + 1]), y)


def test_zero_sigma_is_identity_and_dtypes_are_kept(one_thread):
    x = _photos(2, (3, 8, 8))
    assert torch.equal(add_noise(x, "gaussian", 0.0, 0, [0, 1]), x)
    assert torch.equal(add_noise(x, "speckle", 0.0, 0, [0, 1]), x)
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        for kind in KINDS:
            y = add_noise(x.to(dtype), kind, LEVELS[kind], 0, [0, 1])
            assert y.dtype == dtype and y.shape == x.shape
    # float64 keeps the float32 draws: same noisy values up to float32 rounding.
    y32 = add_noise(x, "gaussian", 0.1, 0, [0, 1])
    y64 = add_noise(x.double(), "gaussian", 0.1, 0, [0, 1])
    assert torch.allclose(y64.float(), y32, atol=1e-6)


def test_empty_batch():
    x = torch.zeros((0, 3, 4, 4))
    assert add_noise(x, "shot", 10.0, 0, []).shape == (0, 3, 4, 4)


# --------------------------------------------------------------------------- the compiled kernel


def test_compiled_impulse_equals_eager(one_thread):
    # Impulse is the cheapest kernel to compile (seconds) and has no transcendental
    # functions, so compiled and eager must agree bit for bit, per image and batch.
    # The compiled kernel derives the image keys itself: indices past 31 and 32 bits too.
    x = _photos(5, (3, 8, 8))
    indices = [3, 2**31, 2**32 + 5, 2**40 + 1, 2**62 + 3]
    eager = add_noise(x, "impulse", 0.3, 5, indices)
    compiled = add_noise(x, "impulse", 0.3, 5, indices, compiled=True)
    assert torch.equal(compiled, eager)
    assert torch.equal(add_noise(x[3:], "impulse", 0.3, 5, indices[3:], compiled=True), eager[3:])


def test_a_failed_compile_warns_once_and_runs_eagerly(one_thread, monkeypatch):
    # Without a C++ compiler torch.compile fails at the first call: add_noise must
    # warn, give the eager result, and not try that kind again.
    calls = []

    def broken_compile(fn, **kwargs):
        def run(*args):
            calls.append(fn)
            raise RuntimeError("no C++ compiler")

        return run

    monkeypatch.setattr(noise_module, "_compiled_kernels", {})
    monkeypatch.setattr(noise_module, "_compile_failed", set())
    monkeypatch.setattr(torch, "compile", broken_compile)
    x = _photos(3, (3, 6, 6))
    for kind in ("gaussian", "shot"):
        eager = add_noise(x, kind, LEVELS[kind], 1, range(3))
        with pytest.warns(RuntimeWarning, match=f"torch.compile failed for {kind}"):
            assert torch.equal(add_noise(x, kind, LEVELS[kind], 1, range(3), compiled=True), eager)
        tries = len(calls)
        assert torch.equal(add_noise(x, kind, LEVELS[kind], 1, range(3), compiled=True), eager)
        assert len(calls) == tries  # not retried


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_matches_cpu(kind):
    x = _photos(4, (3, 32, 32))
    cpu = add_noise(x, kind, LEVELS[kind], 2, range(4))
    gpu = add_noise(x.cuda(), kind, LEVELS[kind], 2, torch.arange(4).cuda())
    assert gpu.device.type == "cuda"
    if kind == "impulse":
        assert torch.equal(gpu.cpu(), cpu)  # integer decisions only
    elif kind == "shot":
        # Counts can flip only where a float comparison sits on a rounding boundary.
        assert (gpu.cpu() != cpu).float().mean().item() < 1e-3
    else:
        assert torch.allclose(gpu.cpu(), cpu, atol=1e-5)


def test_image_keys_equal_their_definition_on_python_ints(one_thread):
    # k1 = h(h(low ^ s0) ^ high ^ s1), k2 likewise with s2, s3, where low and high
    # are the index's 32-bit halves: int64 splitting and int32 wrapping must not lose bits.
    index = [0, 1, 7, 2**31 - 1, 2**31, 2**32 - 1, 2**32 + 5, 2**40 + 1, 2**62 + 3, 2**63 - 1]
    s = [w % 2**32 for w in counter_rng.seed_words(4, "shot")]
    h = counter_rng.mix_word
    expected = [
        [h(h((i % 2**32) ^ s[a]) ^ (i >> 32) ^ s[b]) for i in index] for a, b in ((0, 1), (2, 3))
    ]
    words = counter_rng.seed_tensor(4, "shot", torch.device("cpu"))
    got = counter_rng.image_keys(torch.tensor(index), words)
    assert [[int(k) % 2**32 for k in keys] for keys in got] == expected


def test_neighbouring_values_are_uncorrelated(one_thread):
    # Counters enter the hash as an arithmetic progression per image: no lag may show.
    x = torch.full((8, 3, 64, 64), 0.5)
    z = (add_noise(x, "gaussian", 0.1, seed=2, indices=range(8)) - 0.5).reshape(8, -1).double().numpy()
    n = z.shape[1]
    for lag in (1, 2, 3, 64, 4096, n // 2):
        r = np.mean([np.corrcoef(row[:-lag], row[lag:])[0, 1] for row in z])
        assert abs(r) < 6 / math.sqrt(8 * (n - lag)), lag
