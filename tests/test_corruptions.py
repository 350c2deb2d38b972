"""Tests for robust_csc.corruptions (CIFAR-10-C / ImageNet-C corruptions, seeded per image)."""

from __future__ import annotations

import math
import zlib

import cv2
import imagecorruptions
import numpy as np
import pytest
import skimage.data

from robust_csc.corruptions import (
    ALL,
    CIFAR_IMPLEMENTED,
    CIFAR_PARAMS,
    COMMON,
    EXTRA,
    NOISE,
    check_corruption,
    check_severity,
    corrupt_image,
    corrupt_images,
    image_seed,
    noise_level,
)
from robust_csc.corruptions import cifar as cifar_module
from robust_csc.errors import RobustCSCError

SEVERITIES = (1, 2, 3, 4, 5)

# Statistics are measured on a constant mid-grey image: 256 x 256 x 3 values.
GREY = 128
STAT_SIDE = 256
N_VALUES = STAT_SIDE * STAT_SIDE * 3


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A fixed natural 32x32 RGB image (scikit-image's astronaut, area-resized)."""
    return cv2.resize(skimage.data.astronaut(), (32, 32), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    """Twelve different fixed 32x32 crops of a sample photo."""
    big = cv2.resize(skimage.data.astronaut(), (128, 128), interpolation=cv2.INTER_AREA)
    crops = [big[r : r + 32, c : c + 32] for r in (0, 40, 90) for c in (0, 30, 60, 96)]
    return np.ascontiguousarray(np.stack(crops))


@pytest.fixture(scope="module")
def grey() -> np.ndarray:
    return np.full((STAT_SIDE, STAT_SIDE, 3), GREY, dtype=np.uint8)


def _rel_std_tolerance(n: int, k: float = 6.0) -> float:
    # The sample std of n normal values has relative standard error ~ 1/sqrt(2n).
    return k / math.sqrt(2 * n)


# --------------------------------------------------------------------------- names


def test_names_follow_hendrycks_order():
    assert COMMON == (
        "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
        "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
        "elastic_transform", "pixelate", "jpeg_compression",
    )
    assert EXTRA == ("speckle_noise", "gaussian_blur", "spatter", "saturate")
    assert ALL == COMMON + EXTRA and len(set(ALL)) == 19
    assert NOISE == ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise")
    # Same names as the library's (ImageNet-C) implementation.
    assert list(ALL) == imagecorruptions.get_corruption_names("all")
    assert set(CIFAR_PARAMS) == set(ALL)


def test_cifar_parameter_table_matches_published_values():
    # From make_cifar_c.py (see docs/reference-facts.md, "CIFAR-10-C parameters").
    assert CIFAR_PARAMS["gaussian_noise"] == (0.04, 0.06, 0.08, 0.09, 0.10)
    assert CIFAR_PARAMS["shot_noise"] == (500, 250, 100, 75, 50)
    assert CIFAR_PARAMS["impulse_noise"] == (0.01, 0.02, 0.03, 0.05, 0.07)
    assert CIFAR_PARAMS["speckle_noise"] == (0.06, 0.10, 0.12, 0.16, 0.20)
    assert CIFAR_PARAMS["gaussian_blur"] == (0.4, 0.6, 0.7, 0.8, 1.0)
    assert CIFAR_PARAMS["contrast"] == (0.75, 0.5, 0.4, 0.3, 0.15)
    assert CIFAR_PARAMS["brightness"] == (0.05, 0.1, 0.15, 0.2, 0.3)
    assert CIFAR_PARAMS["jpeg_compression"] == (80, 65, 58, 50, 40)
    assert CIFAR_PARAMS["pixelate"] == (0.95, 0.9, 0.85, 0.75, 0.65)
    assert CIFAR_PARAMS["zoom_blur"] == (1.06, 1.11, 1.16, 1.21, 1.26)
    assert CIFAR_PARAMS["saturate"] == ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2))
    assert CIFAR_PARAMS["glass_blur"][3] == (0.25, 1, 2)
    assert CIFAR_PARAMS["defocus_blur"][4] == (1.5, 0.1)
    assert CIFAR_PARAMS["motion_blur"][4] == (9, 2.5)
    assert CIFAR_PARAMS["fog"][4] == (1.5, 1.75)
    assert CIFAR_PARAMS["frost"][4] == (0.75, 0.45)
    assert CIFAR_PARAMS["snow"][4] == (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)
    assert CIFAR_PARAMS["spatter"][3] == (0.65, 0.1, 0.7, 0.69, 0.6, 1)
    assert CIFAR_PARAMS["elastic_transform"][1] == (0.05, 0.2, 0.07)
    for name in ALL:
        assert len(CIFAR_PARAMS[name]) == 5


def test_noise_level_returns_published_parameters():
    for name in NOISE:
        for s in SEVERITIES:
            assert noise_level(name, s) == float(CIFAR_PARAMS[name][s - 1])
    assert noise_level("gaussian_noise", 5, profile="imagenet") == 0.38
    assert noise_level("shot_noise", 1, profile="imagenet") == 60.0
    assert noise_level("impulse_noise", 3) == 0.03
    with pytest.raises(RobustCSCError, match="no noise level"):
        noise_level("fog", 1)


# --------------------------------------------------------------------------- seeds


def test_image_seed_is_pinned_and_distinct():
    # Pinned: SeedSequence is stable across numpy versions and processes (no hash()).
    first = image_seed(0, "gaussian_noise", 1, 0)
    assert first == image_seed(0, "gaussian_noise", 1, 0)
    assert 0 <= first < 2**63
    seeds = {
        image_seed(seed, name, s, i)
        for seed in (0, 1)
        for name in ("gaussian_noise", "fog")
        for s in (0, 1, 5)
        for i in (0, 1, 9999)
    }
    assert len(seeds) == 2 * 2 * 3 * 3
    # Literal values: a change here would silently change every published result.
    assert first == 4496578042415064109
    assert image_seed(2024, "fog", 3, 49999) == 545538149552358468
    expected = np.random.SeedSequence(
        (0, zlib.crc32(b"gaussian_noise"), 1, 0)
    ).generate_state(2, np.uint32)
    assert first == ((int(expected[0]) << 32) | int(expected[1])) & (2**63 - 1)
    with pytest.raises(RobustCSCError):
        image_seed(-1, "fog", 1, 0)
    with pytest.raises(RobustCSCError):
        image_seed(0, "fog", 1, -3)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("bad", ["gausian_noise", "", None, 3])
def test_unknown_corruption_raises(bad, photo):
    with pytest.raises(RobustCSCError, match="gaussian_noise"):
        check_corruption(bad)
    with pytest.raises(RobustCSCError):
        corrupt_image(photo, bad, 1)


@pytest.mark.parametrize("bad", [0, 6, -1, 2.5, True, "3"])
def test_bad_severity_raises(bad, photo):
    with pytest.raises(RobustCSCError, match="1 to 5"):
        check_severity(bad)
    with pytest.raises(RobustCSCError):
        corrupt_image(photo, "fog", bad)
    with pytest.raises(RobustCSCError):
        corrupt_images(photo[None], "fog", bad, seed=0, indices=[0])


def test_bad_images_profile_and_indices_raise(photo):
    with pytest.raises(RobustCSCError, match="uint8"):
        corrupt_image(photo.astype(np.float32), "fog", 1)
    with pytest.raises(RobustCSCError, match="uint8"):
        corrupt_image(photo[..., 0], "fog", 1)
    with pytest.raises(RobustCSCError, match="profile"):
        corrupt_image(photo, "fog", 1, profile="cifar10")
    with pytest.raises(RobustCSCError, match="indices"):
        corrupt_images(np.stack([photo, photo]), "fog", 1, seed=0, indices=[0])
    with pytest.raises(RobustCSCError, match="integer"):
        corrupt_images(np.stack([photo, photo]), "fog", 1, seed=0, indices=[0.5, 1.5])
    with pytest.raises(RobustCSCError, match="index"):
        corrupt_images(np.stack([photo, photo]), "fog", 1, seed=0, indices=[-1, 0])
    with pytest.raises(RobustCSCError, match="rng"):
        corrupt_image(photo, "fog", 1, rng=np.random.RandomState(0))
    with pytest.raises(RobustCSCError, match="at least 32"):
        corrupt_image(photo[:16, :16].copy(), "fog", 1, profile="imagenet")


def test_unimplemented_cifar_corruption_raises_instead_of_falling_back(photo, monkeypatch):
    monkeypatch.delitem(cifar_module.CIFAR_FUNCTIONS, "snow")
    with pytest.raises(RobustCSCError, match="not implemented for the cifar profile"):
        corrupt_image(photo, "snow", 1)


# --------------------------------------------------------------------------- cifar noise statistics


@pytest.mark.parametrize("severity", SEVERITIES)
def test_cifar_gaussian_noise_std_matches_sigma(grey, severity):
    sigma = CIFAR_PARAMS["gaussian_noise"][severity - 1]
    out = corrupt_image(grey, "gaussian_noise", severity, rng=np.random.default_rng(severity))
    diff = out.astype(np.float64) - GREY
    # Clipping needs |z| > 4.9 sigma (rare); uint8 truncation adds 1/12 level^2 of variance.
    measured = math.sqrt(diff.var() - 1 / 12) / 255
    assert abs(measured / sigma - 1) < _rel_std_tolerance(N_VALUES)
    assert abs(diff.mean() + 0.5) < 6 * sigma * 255 / math.sqrt(N_VALUES)  # truncation bias -0.5


@pytest.mark.parametrize("severity", SEVERITIES)
def test_cifar_shot_noise_variance_matches_x_over_c(grey, severity):
    c = CIFAR_PARAMS["shot_noise"][severity - 1]
    x = GREY / 255
    out = corrupt_image(grey, "shot_noise", severity, rng=np.random.default_rng(severity)) / 255
    expected_var = x / c
    # Relative standard error of a sample variance ~ sqrt(2/n); truncation adds < 1/12 level^2.
    measured_var = out.var() - (1 / 12) / 255**2
    assert abs(measured_var / expected_var - 1) < 6 * math.sqrt(2 / N_VALUES) + 0.01
    assert abs(out.mean() + 0.5 / 255 - x) < 6 * math.sqrt(expected_var / N_VALUES) + 0.5 / 255


@pytest.mark.parametrize("severity", SEVERITIES)
def test_cifar_impulse_noise_changes_fraction_amount(grey, severity):
    amount = CIFAR_PARAMS["impulse_noise"][severity - 1]
    out = corrupt_image(grey, "impulse_noise", severity, rng=np.random.default_rng(severity))
    changed = out != GREY
    frac = changed.mean()
    assert abs(frac - amount) < 5 * math.sqrt(amount * (1 - amount) / N_VALUES)
    # Changed values are salt (255) or pepper (0), half each.
    assert set(np.unique(out[changed])) <= {0, 255}
    n_changed = changed.sum()
    assert abs((out[changed] == 255).mean() - 0.5) < 5 * math.sqrt(0.25 / n_changed)


@pytest.mark.parametrize("severity", SEVERITIES)
def test_cifar_speckle_noise_std_matches_x_times_c(grey, severity):
    c = CIFAR_PARAMS["speckle_noise"][severity - 1]
    x = GREY / 255
    out = corrupt_image(grey, "speckle_noise", severity, rng=np.random.default_rng(severity))
    diff = out.astype(np.float64) - GREY
    measured = math.sqrt(diff.var() - 1 / 12) / 255
    assert abs(measured / (x * c) - 1) < _rel_std_tolerance(N_VALUES)


# --------------------------------------------------------------------------- determinism of batches


@pytest.mark.parametrize(
    "corruption, profile",
    [
        ("gaussian_noise", "cifar"),
        ("impulse_noise", "cifar"),
        ("glass_blur", "cifar"),
        ("fog", "cifar"),
        ("frost", "cifar"),
        ("spatter", "cifar"),
        ("elastic_transform", "cifar"),
        ("shot_noise", "imagenet"),
        ("impulse_noise", "imagenet"),
    ],
)
def test_corrupt_images_independent_of_batching_and_order(photos, corruption, profile):
    indices = np.arange(100, 112)
    reference = corrupt_images(photos, corruption, 3, profile=profile, seed=5, indices=indices)
    assert reference.dtype == np.uint8 and reference.shape == photos.shape
    for split in ([12], [5, 7], [1] * 12):
        bounds = np.cumsum([0] + split)
        parts = [
            corrupt_images(photos[a:b], corruption, 3, profile=profile, seed=5, indices=indices[a:b])
            for a, b in zip(bounds[:-1], bounds[1:])
        ]
        assert np.array_equal(np.concatenate(parts), reference)
    perm = np.random.default_rng(0).permutation(12)
    shuffled = corrupt_images(photos[perm], corruption, 3, profile=profile, seed=5, indices=indices[perm])
    assert np.array_equal(shuffled, reference[perm])
    other = corrupt_images(photos, corruption, 3, profile=profile, seed=6, indices=indices)
    assert not np.array_equal(other, reference)


def test_corruptions_leave_numpy_global_rng_untouched(photo):
    np.random.seed(123)
    expected = np.random.random()
    np.random.seed(123)
    corrupt_image(photo, "fog", 3, rng=np.random.default_rng(0))
    corrupt_image(photo, "frost", 3, profile="imagenet", rng=np.random.default_rng(0))
    assert np.random.random() == expected


# --------------------------------------------------------------------------- every cifar corruption

# Mean absolute difference to the clean image is not monotone in severity for these,
# by design of the CIFAR-10-C parameters (measured, see the report):
#   saturate: s1, s2 desaturate (x0.3, x0.1), s3..s5 oversaturate (x1.5 .. x2.5 +0.2);
#   frost: the image weight falls to 0.75 while the frost weight levels off at .4-.45;
#   elastic_transform: the random affine jitter, which dominates this measure on 32x32,
#     falls from 0.08 to 0.03 of the side while the elastic field grows (measured
#     differences decrease with severity);
#   spatter: s1-s3 are water drops, s4-s5 mud, with different strength scales;
#   glass_blur: s1-s3 (one shuffling pass) are about equal, s4-s5 (two passes) stronger.
NOT_MONOTONE = {"saturate", "frost", "elastic_transform", "spatter", "glass_blur"}


def test_all_corruptions_are_implemented_for_cifar():
    assert CIFAR_IMPLEMENTED == ALL


def _mean_abs_diffs(image: np.ndarray, corruption: str) -> list[float]:
    diffs = []
    for s in SEVERITIES:
        per_seed = [
            np.abs(corrupt_image(image, corruption, s, rng=np.random.default_rng(k)).astype(float) - image).mean()
            for k in range(4)
        ]
        diffs.append(float(np.mean(per_seed)))
    return diffs


@pytest.mark.parametrize("corruption", ALL)
def test_cifar_corruption_output_and_severity_order(photo, corruption):
    for s in SEVERITIES:
        out = corrupt_image(photo, corruption, s, rng=np.random.default_rng(s))
        assert out.dtype == np.uint8 and out.shape == photo.shape
    diffs = _mean_abs_diffs(photo, corruption)
    assert min(diffs) > 0.5, diffs  # every severity changes the image
    if corruption in NOT_MONOTONE:
        assert max(diffs) > min(diffs) + 1.0, diffs  # severity still matters
    else:
        # Non-decreasing up to 0.25 grey levels (motion_blur s3 and s4 differ only in a
        # kernel tail of weight ~1e-8, so their differences tie).
        assert all(b >= a - 0.25 for a, b in zip(diffs, diffs[1:])), diffs
        assert diffs[-1] > diffs[0] + 1.0, diffs


def test_glass_blur_two_passes_stronger_than_one(photo):
    diffs = _mean_abs_diffs(photo, "glass_blur")
    assert min(diffs[3:]) > max(diffs[:3]), diffs


def test_saturate_desaturates_then_saturates(photo):
    def mean_saturation(img):
        return skimage.color.rgb2hsv(img)[..., 1].mean()

    clean = mean_saturation(photo)
    sats = [mean_saturation(corrupt_image(photo, "saturate", s)) for s in SEVERITIES]
    assert sats[1] < sats[0] < clean < sats[2] < sats[3] < sats[4]


@pytest.mark.parametrize("shape", [(24, 40), (96, 80)])
def test_cifar_corruptions_keep_other_image_sizes(shape):
    image = cv2.resize(skimage.data.astronaut(), shape[::-1], interpolation=cv2.INTER_AREA)
    for corruption in ALL:
        out = corrupt_image(image, corruption, 5, rng=np.random.default_rng(0))
        assert out.shape == image.shape and out.dtype == np.uint8, corruption


def test_cifar_profile_is_weaker_than_imagenet_for_noise(photo):
    for corruption in ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise"):
        rng_c, rng_i = np.random.default_rng(0), np.random.default_rng(0)
        c = np.abs(corrupt_image(photo, corruption, 5, rng=rng_c).astype(float) - photo).mean()
        i = np.abs(corrupt_image(photo, corruption, 5, "imagenet", rng=rng_i).astype(float) - photo).mean()
        assert c < i, corruption


# --------------------------------------------------------------------------- imagenet profile


@pytest.mark.parametrize("corruption", ["gaussian_noise", "impulse_noise", "glass_blur", "frost", "contrast"])
def test_imagenet_profile_calls_imagecorruptions_deterministically(photo, corruption, monkeypatch):
    calls = []
    real = imagecorruptions.corrupt

    def spy(image, *args, **kwargs):
        calls.append((kwargs.get("corruption_name"), kwargs.get("severity")))
        return real(image, *args, **kwargs)

    monkeypatch.setattr(imagecorruptions, "corrupt", spy)
    a = corrupt_image(photo, corruption, 2, profile="imagenet", rng=np.random.default_rng(11))
    b = corrupt_image(photo, corruption, 2, profile="imagenet", rng=np.random.default_rng(11))
    assert calls == [(corruption, 2), (corruption, 2)]
    assert a.dtype == np.uint8 and a.shape == photo.shape
    assert np.array_equal(a, b)
    assert not np.array_equal(a, photo)
    if corruption != "contrast":  # contrast is deterministic
        c = corrupt_image(photo, corruption, 2, profile="imagenet", rng=np.random.default_rng(12))
        assert not np.array_equal(a, c)
