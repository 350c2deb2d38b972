"""The CIFAR-10-C corruptions (Hendrycks & Dietterich, ICLR 2019, make_cifar_c.py).

Parameters per severity 1..5 are the CIFAR-10-C ones (much weaker than the
ImageNet-C ones in ``imagecorruptions``).  Every function draws randomness only
from the ``numpy.random.Generator`` it is given, so one image's output depends
only on its own seed.  Where a primitive from ``imagecorruptions`` draws from
numpy's global RNG, the call is wrapped in :func:`global_numpy_seed`.
"""

from __future__ import annotations

import contextlib
import importlib.resources
from io import BytesIO
from typing import Callable, Iterator

import cv2
import numpy as np
import skimage.color
from imagecorruptions.corruptions import _motion_blur, disk, plasma_fractal
from PIL import Image
from scipy.ndimage import map_coordinates
from scipy.ndimage import zoom as scipy_zoom
from skimage.filters import gaussian

# ----------------------------------------------------------------------------
# Parameter tables, severity 1 -> 5 (CIFAR-10-C, make_cifar_c.py).
# ----------------------------------------------------------------------------
CIFAR_PARAMS: dict[str, tuple] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # sigma
    "shot_noise": (500, 250, 100, 75, 50),  # photons per unit intensity
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),  # s&p amount
    "speckle_noise": (0.06, 0.10, 0.12, 0.16, 0.20),  # sigma of x*N(0, c)
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),  # sigma
    # (sigma, max_delta, iterations)
    "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
    # (radius, alias_blur)
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
    # (radius, sigma); angle uniform in [-45, 45]
    "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
    # end of the zoom-factor range arange(1, end, 0.01)
    "zoom_blur": (1.06, 1.11, 1.16, 1.21, 1.26),
    # (amount, wibble decay)
    "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
    # (image weight, frost weight)
    "frost": ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),
    # (loc, scale, zoom, threshold, blur radius, blur sigma, image blend)
    "snow": (
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
        (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
    ),
    # (loc, scale, sigma, threshold, intensity/mud sigma, mode: 0 water, 1 mud)
    "spatter": (
        (0.62, 0.1, 0.7, 0.7, 0.5, 0),
        (0.65, 0.1, 0.8, 0.7, 0.5, 0),
        (0.65, 0.3, 1, 0.69, 0.5, 0),
        (0.65, 0.1, 0.7, 0.69, 0.6, 1),
        (0.65, 0.1, 0.5, 0.68, 0.6, 1),
    ),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),  # added to V in HSV
    "saturate": ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),  # S*a + b
    "jpeg_compression": (80, 65, 58, 50, 40),  # PIL quality
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),  # box resize scale
    # (alpha, sigma, affine jitter), each in units of the image side (32 for CIFAR)
    "elastic_transform": (
        (0, 0, 0.08),
        (0.05, 0.2, 0.07),
        (0.08, 0.06, 0.06),
        (0.1, 0.04, 0.05),
        (0.1, 0.03, 0.03),
    ),
}

# ImageNet-C noise parameters (as in imagecorruptions), for noise_level(profile="imagenet").
IMAGENET_NOISE_PARAMS: dict[str, tuple] = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
    "shot_noise": (60, 25, 12, 5, 3),
    "impulse_noise": (0.03, 0.06, 0.09, 0.17, 0.27),
    "speckle_noise": (0.15, 0.2, 0.35, 0.45, 0.6),
}


@contextlib.contextmanager
def global_numpy_seed(rng: np.random.Generator) -> Iterator[None]:
    """Seed numpy's global RNG from ``rng`` for the block, then restore its old state.

    Some ``imagecorruptions`` primitives draw from ``np.random.*`` (the global
    RNG); seeding it from the image's own generator keeps the result a function
    of that image's seed only.  Not thread-safe (the global RNG is shared).
    """
    saved = np.random.get_state()
    np.random.seed(int(rng.integers(0, 2**32)))
    try:
        yield
    finally:
        np.random.set_state(saved)


def _float(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64) / 255.0


def _gaussian(x: np.ndarray, sigma: float, **kwargs) -> np.ndarray:
    channel_axis = -1 if x.ndim == 3 else None
    return gaussian(x, sigma=sigma, channel_axis=channel_axis, **kwargs)


# ----------------------------------------------------------------------------
# Noise.  Each returns floats in [0, 1].
# ----------------------------------------------------------------------------
def gaussian_noise(image, c, rng):
    x = _float(image)
    return np.clip(x + rng.normal(0.0, c, size=x.shape), 0, 1)


def shot_noise(image, c, rng):
    x = _float(image)
    return np.clip(rng.poisson(x * c) / float(c), 0, 1)


def impulse_noise(image, c, rng):
    # Salt & pepper as skimage.util.random_noise(mode="s&p", amount=c): every
    # value (pixel and channel) is replaced independently with probability c,
    # by 1 (salt) or 0 (pepper) with equal odds.
    x = _float(image)
    flipped = rng.random(x.shape) < c
    salted = rng.random(x.shape) < 0.5
    out = x.copy()
    out[flipped & salted] = 1.0
    out[flipped & ~salted] = 0.0
    return out


def speckle_noise(image, c, rng):
    x = _float(image)
    return np.clip(x + x * rng.normal(0.0, c, size=x.shape), 0, 1)


# ----------------------------------------------------------------------------
# Blur.
# ----------------------------------------------------------------------------
def gaussian_blur(image, c, rng):
    return np.clip(_gaussian(_float(image), c), 0, 1)


def glass_blur(image, c, rng):
    sigma, delta, iterations = c
    x = np.uint8(_gaussian(_float(image), sigma) * 255)
    height, width = x.shape[:2]
    rows = range(height - delta, delta, -1)
    cols = range(width - delta, delta, -1)
    for _ in range(iterations):
        offsets = rng.integers(-delta, delta, size=(len(rows), len(cols), 2))
        for i, h in enumerate(rows):
            for j, w in enumerate(cols):
                dx, dy = offsets[i, j]
                # make_cifar_c.py writes ``x[h, w], x[h', w'] = x[h', w'], x[h, w]``
                # on numpy row views, which copies x[h', w'] into x[h, w] (both
                # end up equal) rather than swapping; CIFAR-10-C was made that
                # way, so the same copy is done here.
                x[h, w] = x[h + dy, w + dx]
    return np.clip(_gaussian(x / 255.0, sigma), 0, 1)


def defocus_blur(image, c, rng):
    x = _float(image).astype(np.float32)
    kernel = disk(radius=c[0], alias_blur=c[1])
    channels = [cv2.filter2D(x[:, :, d], -1, kernel) for d in range(x.shape[2])]
    return np.clip(np.stack(channels, axis=-1), 0, 1)


def motion_blur(image, c, rng):
    # make_cifar_c.py used ImageMagick's motion blur (Wand); imagecorruptions'
    # numpy re-implementation of it is used here.
    radius, sigma = c
    angle = rng.uniform(-45, 45)
    blurred = _motion_blur(image.astype(np.float64), radius=radius, sigma=sigma, angle=angle)
    return np.clip(blurred / 255.0, 0, 1)


def _center_zoom(x: np.ndarray, factor: float) -> np.ndarray:
    """Zoom the centre of ``x`` (H, W, C) by ``factor`` and crop back to H x W."""
    height, width = x.shape[:2]
    crop_h = int(np.ceil(height / factor))
    crop_w = int(np.ceil(width / factor))
    top = (height - crop_h) // 2
    left = (width - crop_w) // 2
    zoomed = scipy_zoom(x[top : top + crop_h, left : left + crop_w], (factor, factor, 1), order=1)
    trim_top = (zoomed.shape[0] - height) // 2
    trim_left = (zoomed.shape[1] - width) // 2
    return zoomed[trim_top : trim_top + height, trim_left : trim_left + width]


def zoom_blur(image, c, rng):
    x = _float(image).astype(np.float32)
    factors = np.arange(1, c, 0.01)
    out = np.zeros_like(x)
    for factor in factors:
        out += _center_zoom(x, factor)
    return np.clip((x + out) / (len(factors) + 1), 0, 1)


# ----------------------------------------------------------------------------
# Weather.
# ----------------------------------------------------------------------------
def fog(image, c, rng):
    amount, decay = c
    x = _float(image)
    height, width = x.shape[:2]
    mapsize = 1 << max(int(np.ceil(np.log2(max(height, width, 2)))), 1)
    with global_numpy_seed(rng):
        fractal = plasma_fractal(mapsize=mapsize, wibbledecay=decay)
    max_val = x.max()
    x = x + amount * fractal[:height, :width][..., np.newaxis]
    return np.clip(x * max_val / (max_val + amount), 0, 1)


_FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg")
_frost_cache: dict[int, np.ndarray] = {}


def _frost_picture(idx: int) -> np.ndarray:
    """The idx-th frost picture of imagecorruptions, scaled by 0.2, as RGB uint8."""
    if idx not in _frost_cache:
        ref = importlib.resources.files("imagecorruptions") / "frost" / _FROST_FILES[idx]
        with importlib.resources.as_file(ref) as path:
            picture = cv2.imread(str(path))
        picture = cv2.resize(picture, (0, 0), fx=0.2, fy=0.2)
        _frost_cache[idx] = picture[..., ::-1].copy()
    return _frost_cache[idx]


def frost(image, c, rng):
    # make_cifar_c.py draws np.random.randint(5): the sixth picture is never used.
    picture = _frost_picture(int(rng.integers(0, 5)))
    height, width = image.shape[:2]
    if picture.shape[0] <= height or picture.shape[1] <= width:
        # Larger-than-CIFAR images: scale the picture up until a crop fits.
        scale = 1.1 * max(height / picture.shape[0], width / picture.shape[1])
        picture = cv2.resize(picture, (0, 0), fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    top = int(rng.integers(0, picture.shape[0] - height))
    left = int(rng.integers(0, picture.shape[1] - width))
    crop = picture[top : top + height, left : left + width].astype(np.float64)
    return np.clip(c[0] * image.astype(np.float64) + c[1] * crop, 0, 255) / 255.0


def snow(image, c, rng):
    loc, scale, zoom, threshold, radius, sigma, blend = c
    x = _float(image).astype(np.float32)
    layer = rng.normal(loc, scale, size=x.shape[:2])
    layer = _center_zoom(layer[..., np.newaxis], zoom)[..., 0]
    layer[layer < threshold] = 0
    layer = np.clip(layer, 0, 1)
    # make_cifar_c.py blurs the layer with ImageMagick's motion blur after an
    # 8-bit round trip; imagecorruptions' numpy motion blur stands in for it.
    layer = _motion_blur(layer, radius=radius, sigma=sigma, angle=rng.uniform(-135, -45))
    layer = (np.round(np.clip(layer, 0, 1) * 255) / 255.0)[..., np.newaxis]
    gray = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)[..., np.newaxis]
    x = blend * x + (1 - blend) * np.maximum(x, gray * 1.5 + 0.5)
    return np.clip(x + layer + np.rot90(layer, k=2), 0, 1)


def spatter(image, c, rng):
    loc, scale, sigma, threshold, intensity, mode = c
    x = _float(image).astype(np.float32)
    liquid = rng.normal(loc, scale, size=x.shape[:2])
    liquid = _gaussian(liquid, sigma)
    liquid[liquid < threshold] = 0
    if mode == 0:
        # Water drops: liquid weighted by an edge-distance texture, pale turquoise.
        liquid8 = (liquid * 255).astype(np.uint8)
        dist = 255 - cv2.Canny(liquid8, 50, 150)
        dist = cv2.distanceTransform(dist, cv2.DIST_L2, 5)
        _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
        dist = cv2.blur(dist, (3, 3)).astype(np.uint8)
        dist = cv2.equalizeHist(dist)
        kernel = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])
        dist = cv2.filter2D(dist, cv2.CV_8U, kernel)
        dist = cv2.blur(dist, (3, 3)).astype(np.float32)
        m = (liquid8 * dist).astype(np.float32)
        peak = m.max()
        if peak > 0:
            m = m / peak
        m = m * intensity
        # Channel order as in make_cifar_c.py (colour given "BGR" on an RGB image).
        color = np.array([175, 238, 238], dtype=np.float32) / 255.0
        return np.clip(x + m[..., np.newaxis] * color, 0, 1)
    # Mud: blurred blobs, mud brown.
    m = np.where(liquid > threshold, 1, 0).astype(np.float32)
    m = _gaussian(m, intensity)
    m[m < 0.8] = 0
    color = np.array([63, 42, 20], dtype=np.float32) / 255.0
    x = x * (1 - m[..., np.newaxis])
    return np.clip(x + m[..., np.newaxis] * color, 0, 1)


# ----------------------------------------------------------------------------
# Digital.
# ----------------------------------------------------------------------------
def contrast(image, c, rng):
    x = _float(image)
    means = x.mean(axis=(0, 1), keepdims=True)
    return np.clip((x - means) * c + means, 0, 1)


def brightness(image, c, rng):
    hsv = skimage.color.rgb2hsv(_float(image))
    hsv[:, :, 2] = np.clip(hsv[:, :, 2] + c, 0, 1)
    return np.clip(skimage.color.hsv2rgb(hsv), 0, 1)


def saturate(image, c, rng):
    hsv = skimage.color.rgb2hsv(_float(image))
    hsv[:, :, 1] = np.clip(hsv[:, :, 1] * c[0] + c[1], 0, 1)
    return np.clip(skimage.color.hsv2rgb(hsv), 0, 1)


def jpeg_compression(image, c, rng):
    buffer = BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=c)
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("RGB"), dtype=np.float64) / 255.0


def pixelate(image, c, rng):
    height, width = image.shape[:2]
    small = (max(int(width * c), 1), max(int(height * c), 1))
    pil = Image.fromarray(image).resize(small, Image.BOX).resize((width, height), Image.BOX)
    return np.asarray(pil, dtype=np.float64) / 255.0


def elastic_transform(image, c, rng):
    # make_cifar_c.py scales all three parameters by the image side (IMSIZE*a,
    # IMSIZE*b, IMSIZE*c), the affine jitter included; checked against the script.
    x = _float(image).astype(np.float32)
    height, width = x.shape[:2]
    side = min(height, width)
    alpha, sigma, jitter = (v * side for v in c)

    # Random affine: three points around the centre, each moved by up to `jitter`.
    center = np.float32((height, width)) // 2
    half = side // 3
    pts1 = np.float32(
        [center + half, [center[0] + half, center[1] - half], center - half]
    )
    pts2 = pts1 + rng.uniform(-jitter, jitter, size=pts1.shape).astype(np.float32)
    matrix = cv2.getAffineTransform(pts1, pts2)
    x = cv2.warpAffine(x, matrix, (width, height), borderMode=cv2.BORDER_REFLECT_101)

    # Smooth random displacement field (zero at severity 1, where alpha = 0).
    dx_noise = rng.uniform(-1, 1, size=(height, width))
    dy_noise = rng.uniform(-1, 1, size=(height, width))
    if sigma > 0:
        dx_noise = gaussian(dx_noise, sigma, mode="reflect", truncate=3)
        dy_noise = gaussian(dy_noise, sigma, mode="reflect", truncate=3)
    dx = (dx_noise * alpha).astype(np.float32)[..., np.newaxis]
    dy = (dy_noise * alpha).astype(np.float32)[..., np.newaxis]
    cols, rows, chans = np.meshgrid(np.arange(width), np.arange(height), np.arange(x.shape[2]))
    coords = (
        np.reshape(rows + dy, (-1,)),
        np.reshape(cols + dx, (-1,)),
        np.reshape(chans, (-1,)),
    )
    out = map_coordinates(x, coords, order=1, mode="reflect").reshape(x.shape)
    return np.clip(out, 0, 1)


#: The implemented CIFAR-10-C corruptions: name -> f(image uint8, parameter, rng) -> float in [0, 1].
CIFAR_FUNCTIONS: dict[str, Callable] = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "speckle_noise": speckle_noise,
    "brightness": brightness,
    "contrast": contrast,
    "saturate": saturate,
    "jpeg_compression": jpeg_compression,
    "pixelate": pixelate,
    "gaussian_blur": gaussian_blur,
    "defocus_blur": defocus_blur,
    "motion_blur": motion_blur,
    "zoom_blur": zoom_blur,
    "glass_blur": glass_blur,
    "elastic_transform": elastic_transform,
    "fog": fog,
    "frost": frost,
    "snow": snow,
    "spatter": spatter,
}
