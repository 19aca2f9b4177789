"""An image parser for the toy world: exact on clean renders, soft on everything else.

Pipeline for one image [32,32,3] in [0,1] (vectorised over the batch where possible):

1. Background: per-channel median of the low-chroma pixels (fallback: the world's grey).
2. Every pixel is projected onto the 12 lines ``bg -> colour`` (6 palette colours and their
   dark stripe variants): ``alpha`` (coverage along the line, clipped to [0,1]) and the
   residual distance to the line. A pixel is foreground when the best line's alpha >= 0.5.
   Anti-aliased edges are exact mixtures ``bg + a (c - bg)``, so alpha recovers coverage.
3. 4-connected components of the foreground; each grows by one pixel ring (its
   anti-aliased edge). Components with area < ``MIN_AREA_PX`` are clutter, not objects.
4. Per object:
   * colour: residual-softmax votes of its pixels, base and dark variants pooled per hue;
   * texture: mean jump of luminance between consecutive pixel rows (the stripes are
     horizontal bands), relative to the mean luminance, through a logistic;
   * shape: the coverage map is compared with rendered templates of each shape having the
     same area and centroid; softmax of minus the squared error;
   * size: the area-equivalent radius, expected over the shape probabilities, against
     ``SIZE_THRESHOLD_PX`` through a logistic;
   * detection (objectness): the area ramp ``(area - 4) / 12`` clipped to [0,1];
   * aesthetics inputs: ``border_contact`` (coverage on the frame's outer pixel ring over
     sqrt(area): 0 when the object is inside the frame, ~1 when cut off) and
     ``edge_width`` (pixels of partial coverage 0.15-0.85 per unit of perimeter: ~0.7 for
     crisp anti-aliased edges, 2+ when blurred).
5. Scene: ``speckle`` = robust std (1.4826 MAD) of the background pixels, ``clutter`` =
   area of the rejected small components.

Every probability is smoothed, ``p <- (1 - EPS_PROB) p + EPS_PROB / K``, so the parser is
never certain (like a real VQA model), which keeps products and logs finite.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from lpo_bench.toy import world as W

EPS_PROB = 0.02
MIN_AREA_PX = 6.0
COLOR_SIGMA = 0.06  # residual scale (RGB distance) of the colour votes
SHAPE_TEMPERATURE_PX = 0.4  # squared-error scale (px^2 of coverage) of the shape softmax
STRIPE_JUMP_THRESHOLD = 0.08  # relative row-to-row luminance jump at p(striped) = 0.5
STRIPE_JUMP_SCALE = 0.02
SIZE_SCALE_PX = 0.15
PERIMETER_FACTOR = {  # perimeter in units of r
    "circle": 2 * np.pi,
    "square": 8 * W.SQUARE_HALF_SIDE,
    "triangle": 3 * np.sqrt(3.0) * W.TRIANGLE_CIRCUMRADIUS,
}
_N = len(W.COLORS)
_ATTR_VALUES = {"shape": W.SHAPES, "color": tuple(W.COLORS), "texture": W.TEXTURES, "size": W.SIZES}


def _smooth(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    p = p / p.sum() if p.sum() > 0 else np.full_like(p, 1.0 / p.size)
    return (1 - EPS_PROB) * p + EPS_PROB / p.size


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-min(max(float(x), -50.0), 50.0)))


@dataclass(frozen=True, eq=False)
class ParsedObject:
    """One detected object. Probability vectors follow the world's vocab order."""

    shape_probs: np.ndarray  # [3] SHAPES
    color_probs: np.ndarray  # [6] COLORS
    texture_probs: np.ndarray  # [2] TEXTURES
    size_probs: np.ndarray  # [2] SIZES
    detection: float  # objectness in [0,1]
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive) of pixels with alpha >= 0.5
    cx: float  # coverage-weighted centroid, px
    cy: float
    area_px: float
    radius_px: float
    border_contact: float
    edge_width: float

    def probs(self, attr: str) -> np.ndarray:
        return getattr(self, f"{attr}_probs")

    def prob(self, attr: str, value: str) -> float:
        """p(attr == value), e.g. ``prob("color", "red")``."""
        return float(self.probs(attr)[_ATTR_VALUES[attr].index(value)])

    def label(self, attr: str) -> str:
        return _ATTR_VALUES[attr][int(np.argmax(self.probs(attr)))]

    @property
    def shape(self) -> str:
        return self.label("shape")

    @property
    def color(self) -> str:
        return self.label("color")

    @property
    def texture(self) -> str:
        return self.label("texture")

    @property
    def size(self) -> str:
        return self.label("size")

    def match_prob(self, req: W.ObjReq) -> float:
        """p(this object is what ``req`` asks for): product over the specified attributes."""
        p = self.prob("shape", req.shape)
        for attr in ("color", "texture", "size"):
            value = getattr(req, attr)
            if value is not None:
                p *= self.prob(attr, value)
        return p


@dataclass(frozen=True, eq=False)
class ParsedScene:
    objects: tuple[ParsedObject, ...]
    background: np.ndarray  # [3]
    speckle: float  # robust std of background pixels
    clutter: float  # area (px) of components too small to be objects
    border_contact: float  # sum over objects
    edge_width: float  # mean over objects (0 without objects)


def _projections(imgs: np.ndarray, bg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """alpha, squared residual [B,32,32,12] of each pixel on each bg->colour line."""
    colors = np.concatenate([W.palette(), W.palette(dark=True)])  # [12,3]
    d = imgs - bg[:, None, None, :].astype(np.float32)  # [B,32,32,3]
    v = (colors[None] - bg[:, None, :]).astype(np.float32)  # [B,12,3]
    vv = (v * v).sum(-1)[:, None, None, :]  # [B,1,1,12]
    vb = v[:, None, None, :, :]  # [B,1,1,12,3]
    dv = d[..., 0:1] * vb[..., 0] + d[..., 1:2] * vb[..., 1] + d[..., 2:3] * vb[..., 2]  # [B,32,32,12]
    alpha = dv / vv
    np.clip(alpha, 0.0, 1.0, out=alpha)
    # |d - a v|^2 = |d|^2 - a (2 d.v - a |v|^2)
    res2 = (d * d).sum(-1, keepdims=True) - alpha * (2 * dv - alpha * vv)
    np.maximum(res2, 0.0, out=res2)
    return alpha, res2


def _background(imgs: np.ndarray) -> np.ndarray:
    """[B,3] per-channel median of the low-chroma pixels."""
    out = np.full((len(imgs), 3), W.BACKGROUND)
    chroma = imgs.max(-1) - imgs.min(-1)
    for i, img in enumerate(imgs):
        grey = img[chroma[i] < 0.08]
        if len(grey) >= 32:
            out[i] = np.median(grey, axis=0)
    return out


_CROSS = ndimage.generate_binary_structure(2, 1)


def _template(shape: str, r: float, cx: float, cy: float, y0: int, x0: int, h: int, w: int) -> np.ndarray:
    """Coverage [h,w] of a shape over the window at (y0, x0), 4x supersampled."""
    s = W.SUPERSAMPLE
    xs = x0 + (np.arange(w * s) + 0.5) / s
    ys = y0 + (np.arange(h * s) + 0.5) / s
    m = W.shape_masks(shape, np.array([r]), np.array([cx]), np.array([cy]), xs, ys)[0]
    return m.reshape(h, s, w, s).sum(axis=(1, 3), dtype=np.float32) * (1.0 / (s * s))


def _parse_object(
    img: np.ndarray,
    region: np.ndarray,
    core: np.ndarray,
    alpha: np.ndarray,
    res2: np.ndarray,
    bg: np.ndarray,
    y0: int,
    x0: int,
) -> ParsedObject | None:
    """One component, on a window at (y0, x0) of the image: ``region`` = ``core`` plus
    its anti-aliased ring (bool [h,w]); the window has a one-pixel margin around it
    where the image allows. ``bg`` [3] is the background colour."""
    votes = np.exp(-res2[core] / (2 * COLOR_SIGMA**2))  # [n,12]
    votes /= votes.sum(-1, keepdims=True) + 1e-12
    hue_votes = votes.T @ alpha[core].max(-1)
    color_probs = _smooth(hue_votes[:_N] + hue_votes[_N:])
    f = int(np.argmax(color_probs))
    use_dark = res2[..., f + _N] < res2[..., f]
    a = np.where(use_dark, alpha[..., f + _N], alpha[..., f]) * region  # coverage map [h,w]
    area = float(a.sum())
    if area < MIN_AREA_PX:
        return None
    h, w = a.shape
    px = x0 + 0.5 + np.arange(w)
    py = y0 + 0.5 + np.arange(h)
    cx = float((a.sum(0) * px).sum() / area)
    cy = float((a.sum(1) * py).sum() / area)

    # shape: compare with same-area, same-centroid templates over the window
    radii = np.sqrt(area / np.array([W.AREA_FACTOR[s] for s in W.SHAPES]))
    sse = np.array(
        [
            ((a - _template(s, r, cx, cy, y0, x0, h, w)) ** 2).sum()
            for s, r in zip(W.SHAPES, radii, strict=True)
        ]
    )
    shape_probs = _smooth(np.exp(-(sse - sse.min()) / SHAPE_TEMPERATURE_PX))
    radius = float(shape_probs @ radii)
    p_large = _sigmoid((radius - W.SIZE_THRESHOLD_PX) / SIZE_SCALE_PX)
    size_probs = _smooth(np.array([1 - p_large, p_large]))

    # texture: luminance jumps between consecutive rows of the solid interior
    inner = core & (a > 0.85)
    n_row = inner.sum(1)
    keep = n_row >= 2
    if keep.sum() >= 3:
        # un-mix the background of partly covered pixels: colour = bg + (pixel - bg) / a
        bg_lum = float(bg.mean())
        lum = bg_lum + (img.mean(-1) - bg_lum) / np.maximum(a, 0.5)
        rows = (lum * inner).sum(1)[keep] / n_row[keep]
        jump = float(np.abs(np.diff(rows)).mean() / max(rows.mean(), 1e-3))
        p_striped = _sigmoid((jump - STRIPE_JUMP_THRESHOLD) / STRIPE_JUMP_SCALE)
    else:
        p_striped = 0.5
    texture_probs = _smooth(np.array([1 - p_striped, p_striped]))

    last = W.IMAGE_SIZE - 1
    on_ring = ((py[:, None] < 1) | (py[:, None] > last)) | ((px[None, :] < 1) | (px[None, :] > last))
    perimeter = PERIMETER_FACTOR[W.SHAPES[int(np.argmax(shape_probs))]] * radius
    partial = float(((a > 0.15) & (a < 0.85)).sum())
    cols, rows_ = np.nonzero(core.any(0))[0], np.nonzero(core.any(1))[0]
    return ParsedObject(
        shape_probs=shape_probs,
        color_probs=color_probs,
        texture_probs=texture_probs,
        size_probs=size_probs,
        detection=float((1 - EPS_PROB) * np.clip((area - 4.0) / 12.0, 0.0, 1.0)),
        bbox=(x0 + int(cols[0]), y0 + int(rows_[0]), x0 + int(cols[-1]) + 1, y0 + int(rows_[-1]) + 1),
        cx=cx,
        cy=cy,
        area_px=area,
        radius_px=radius,
        border_contact=float(a[on_ring].sum() / np.sqrt(area)),
        edge_width=partial / max(perimeter, 1e-6),
    )


def parse_batch(imgs: np.ndarray | Sequence[np.ndarray]) -> list[ParsedScene]:
    """Parse images [b,32,32,3] float in [0,1] (values outside are clipped)."""
    imgs = np.clip(np.asarray(imgs, dtype=np.float32), 0.0, 1.0)
    if imgs.ndim != 4 or imgs.shape[1:] != (W.IMAGE_SIZE, W.IMAGE_SIZE, 3):
        raise ValueError(f"expected images [b,{W.IMAGE_SIZE},{W.IMAGE_SIZE},3], got {imgs.shape}")
    bg = _background(imgs)
    alpha, res2 = _projections(imgs, bg)
    best = np.take_along_axis(alpha, res2.argmin(-1)[..., None], -1)[..., 0]  # [B,32,32]
    size = W.IMAGE_SIZE
    out = []
    for i in range(len(imgs)):
        labels, n = ndimage.label(best[i] >= 0.5, structure=_CROSS)
        grown = np.where(labels > 0, labels, ndimage.grey_dilation(labels, footprint=np.ones((3, 3), bool)))
        counts = np.bincount(labels.ravel(), minlength=n + 1)
        objects, clutter = [], 0.0
        for k, sl in enumerate(ndimage.find_objects(grown), start=1):
            if sl is None:
                continue
            y0, y1 = max(sl[0].start - 1, 0), min(sl[0].stop + 1, size)
            x0, x1 = max(sl[1].start - 1, 0), min(sl[1].stop + 1, size)
            region = grown[y0:y1, x0:x1] == k
            obj = None
            if counts[k] >= 3:  # a component of one or two pixels is speckle
                win = (slice(y0, y1), slice(x0, x1))
                obj = _parse_object(
                    imgs[i][win], region, labels[win] == k, alpha[i][win], res2[i][win], bg[i], y0, x0
                )
            if obj is None:
                clutter += float(best[i][y0:y1, x0:x1][region].sum())
            else:
                objects.append(obj)
        bg_pix = grown == 0
        dev = np.abs(imgs[i][bg_pix] - bg[i]) if bg_pix.any() else np.zeros((1, 3))
        out.append(
            ParsedScene(
                objects=tuple(objects),
                background=bg[i],
                speckle=float(1.4826 * np.median(dev)),
                clutter=clutter,
                border_contact=float(sum(o.border_contact for o in objects)),
                edge_width=float(np.mean([o.edge_width for o in objects])) if objects else 0.0,
            )
        )
    return out


def parse_image(img: np.ndarray) -> ParsedScene:
    """Parse one image [32,32,3] float in [0,1]."""
    return parse_batch(np.asarray(img)[None])[0]
