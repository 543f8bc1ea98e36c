"""Pictures of diffusion with Pillow alone: image grids, the forward process, the reverse process
and 2-D scatter plots.

Images come in as uint8 arrays of shape (N, H, W, C) — what ``Preprocess.to_uint8`` and
``LoadedRun.generate`` return. One channel is drawn grey, three RGB, four RGBA; any other count is
drawn as its channels side by side in grey, so nothing is silently dropped.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)
CAPTION_COLOUR = (0, 0, 0)


def _as_images(images: np.ndarray, name: str = "images") -> np.ndarray:
    arr = np.asarray(images)
    if arr.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 (use Preprocess.to_uint8), got dtype {arr.dtype}")
    if arr.ndim == 3:  # (N, H, W): one channel
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[0] == 0 or min(arr.shape[1:]) == 0:
        raise ValueError(f"{name} must have shape (N, H, W, C) with N >= 1, got {arr.shape}")
    return arr


def _to_rgb(img: np.ndarray) -> np.ndarray:
    """One (H, W, C) uint8 image as (H, W', 3) RGB, W' = W·C for channel counts not in {1, 3, 4}."""
    c = img.shape[-1]
    if c == 1:
        return np.repeat(img, 3, axis=-1)
    if c == 3:
        return img
    if c == 4:  # composite over white so transparent pixels show as background
        a = img[..., 3:4].astype(np.float32) / 255.0
        rgb = img[..., :3].astype(np.float32) * a + 255.0 * (1 - a)
        return np.rint(rgb).astype(np.uint8)
    side = np.concatenate([img[..., k] for k in range(c)], axis=1)
    return np.repeat(side[..., None], 3, axis=-1)


def _auto_scale(height: int, target: int = 48) -> int:
    """Nearest-neighbour magnification so tiny images (8×8 digits) stay visible."""
    return max(1, target // height)


def image_grid(images: np.ndarray, nrow: int | None = None, padding: int = 2,
               scale: int | None = None) -> Image.Image:
    """Tile (N, H, W, C) uint8 images into one RGB picture, ``nrow`` images per row
    (default ⌈√N⌉), each magnified ``scale`` times (default: to about 48 pixels tall)."""
    arr = _as_images(images)
    n = arr.shape[0]
    nrow = nrow or math.ceil(math.sqrt(n))
    if nrow < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    scale = scale or _auto_scale(arr.shape[1])
    tiles = [_to_rgb(im) for im in arr]
    th, tw = tiles[0].shape[0] * scale, tiles[0].shape[1] * scale
    rows = math.ceil(n / nrow)
    canvas = np.full((rows * (th + padding) + padding, nrow * (tw + padding) + padding, 3),
                     BACKGROUND, dtype=np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, nrow)
        big = tile.repeat(scale, axis=0).repeat(scale, axis=1)
        y, x = padding + r * (th + padding), padding + c * (tw + padding)
        canvas[y:y + th, x:x + tw] = big
    return Image.fromarray(canvas)


def spectrogram_pictures(spectrograms: np.ndarray) -> np.ndarray:
    """Log-mel spectrograms (N, 1, n_mels, frames) in [−1, 1] → uint8 (N, n_mels, frames, 1)
    pictures, loud bright and the lowest mel band at the bottom row, as spectrograms are read."""
    x = np.asarray(spectrograms, dtype=np.float32)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"spectrograms must have shape (N, 1, n_mels, frames), got {x.shape}")
    v = np.rint((np.clip(x[:, 0], -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
    return np.ascontiguousarray(v[:, ::-1, :, None])


def spectrogram_grid(spectrograms: np.ndarray, nrow: int | None = None) -> Image.Image:
    """A grid of log-mel spectrograms (see :func:`spectrogram_pictures`), at most four per row
    by default: they are wide (frames) and short (mels)."""
    pictures = spectrogram_pictures(spectrograms)
    return image_grid(pictures, nrow=nrow or min(len(pictures), 4))


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=12)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def _caption_height() -> int:
    return 16


def labelled_rows(rows: Sequence[np.ndarray], column_captions: Sequence[str] | None = None,
                  row_captions: Sequence[str] | None = None, padding: int = 2,
                  scale: int | None = None) -> Image.Image:
    """A table of images: ``rows[r]`` is (K, H, W, C) uint8, every row with the same K, captions
    above the columns and left of the rows."""
    arrs = [_as_images(r, f"rows[{i}]") for i, r in enumerate(rows)]
    if not arrs:
        raise ValueError("labelled_rows needs at least one row")
    k = arrs[0].shape[0]
    if any(a.shape[0] != k for a in arrs):
        raise ValueError(f"every row must hold the same number of images, got "
                         f"{[a.shape[0] for a in arrs]}")
    if column_captions is not None and len(column_captions) != k:
        raise ValueError(f"{len(column_captions)} column captions for {k} columns")
    if row_captions is not None and len(row_captions) != len(arrs):
        raise ValueError(f"{len(row_captions)} row captions for {len(arrs)} rows")
    grids = [image_grid(a, nrow=k, padding=padding, scale=scale) for a in arrs]
    font = _font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left = 0
    if row_captions:
        left = max(int(probe.textlength(s, font=font)) for s in row_captions) + 2 * padding
    top = _caption_height() if column_captions else 0
    width = left + max(g.width for g in grids)
    height = top + sum(g.height for g in grids)
    out = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(out)
    if column_captions:
        cell = (grids[0].width - padding) / k
        for j, s in enumerate(column_captions):
            w = probe.textlength(s, font=font)
            draw.text((left + padding + j * cell + (cell - padding - w) / 2, 1), s,
                      fill=CAPTION_COLOUR, font=font)
    y = top
    for i, g in enumerate(grids):
        out.paste(g, (left, y))
        if row_captions:
            draw.text((padding, y + g.height / 2 - 6), row_captions[i], fill=CAPTION_COLOUR, font=font)
        y += g.height
    return out


def forward_process(frames: np.ndarray, ts: Sequence[float], scale: int | None = None
                    ) -> Image.Image:
    """The forward process of one example: ``frames`` (K, H, W, C) uint8 are x_t at the times
    ``ts``, drawn left to right with "t = …" above each."""
    frames = _as_images(frames, "frames")
    if len(ts) != frames.shape[0]:
        raise ValueError(f"{len(ts)} times for {frames.shape[0]} frames")
    return labelled_rows([frames], [f"t={_fmt_t(t)}" for t in ts], scale=scale)


def reverse_process(x_t: np.ndarray, x0_hat: np.ndarray, ts: Sequence[float],
                    scale: int | None = None) -> Image.Image:
    """The reverse process: for each of E examples two rows — x_t and the prediction x̂_0 made
    from it — at the K times ``ts``. ``x_t`` and ``x0_hat`` are uint8 of shape (K, E, H, W, C)
    (or (K, H, W, C) for one example)."""
    a, b = np.asarray(x_t), np.asarray(x0_hat)
    if a.shape != b.shape:
        raise ValueError(f"x_t has shape {a.shape} but x0_hat has {b.shape}")
    if a.ndim == 4:
        a, b = a[:, None], b[:, None]
    if a.ndim != 5:
        raise ValueError(f"x_t must have shape (K, E, H, W, C) or (K, H, W, C), got {a.shape}")
    if len(ts) != a.shape[0]:
        raise ValueError(f"{len(ts)} times for {a.shape[0]} steps")
    rows, names = [], []
    for e in range(a.shape[1]):
        rows += [a[:, e], b[:, e]]
        names += ["x_t", "pred x_0"]  # ASCII: Pillow's default font has no combining hat
    return labelled_rows(rows, [f"t={_fmt_t(t)}" for t in ts], names, scale=scale)


def _fmt_t(t: float) -> str:
    t = float(t)
    return str(int(t)) if t == int(t) else f"{t:.1f}"


def scatter(points: np.ndarray, reference: np.ndarray | None = None, size: int = 480,
            radius: float = 1.5, limits: tuple[float, float, float, float] | None = None
            ) -> Image.Image:
    """A square scatter plot of (N, 2) ``points`` (blue, the samples) over optional
    ``reference`` points (grey, the data), with a frame and the axis ranges in the corners.

    ``limits = (xmin, xmax, ymin, ymax)`` defaults to the data's range: the reference's box
    plus 5 % on each side, so a few wild samples cannot shrink the picture of the distribution
    to a dot. Without a reference it is the box of the central 98 % of the points per axis
    (1st to 99th percentile) plus 10 %. Points outside are counted in a caption, not drawn.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"points must have shape (N, 2), got {pts.shape}")
    ref = None if reference is None else np.asarray(reference, dtype=np.float64)
    if ref is not None and (ref.ndim != 2 or ref.shape[1] != 2):
        raise ValueError(f"reference must have shape (M, 2), got {ref.shape}")
    if limits is None:
        limits = _data_limits(pts if ref is None else ref, robust=ref is None)
    xmin, xmax, ymin, ymax = (float(v) for v in limits)
    if not (xmax > xmin and ymax > ymin):
        raise ValueError(f"limits must satisfy xmin < xmax and ymin < ymax, got {limits}")
    margin = 24
    img = Image.new("RGB", (size + 2 * margin, size + 2 * margin), BACKGROUND)
    draw = ImageDraw.Draw(img)
    draw.rectangle([margin, margin, margin + size, margin + size], outline=(0, 0, 0))

    def plot(p: np.ndarray, colour: tuple[int, int, int]) -> int:
        """Draw the points inside the frame; return how many lie outside (or are not finite)."""
        finite = p[np.isfinite(p).all(axis=1)]
        px = margin + (finite[:, 0] - xmin) / (xmax - xmin) * size
        py = margin + (ymax - finite[:, 1]) / (ymax - ymin) * size  # y grows upwards
        inside = (px >= margin) & (px <= margin + size) & (py >= margin) & (py <= margin + size)
        for x, y in zip(px[inside], py[inside], strict=True):
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour)
        return len(p) - int(inside.sum())

    if ref is not None:
        plot(ref, (170, 170, 170))
    outside = plot(pts, (31, 90, 200))
    font = _font()
    draw.text((margin, margin + size + 4), f"x: [{xmin:.2f}, {xmax:.2f}]", fill=CAPTION_COLOUR,
              font=font)
    top = f"y: [{ymin:.2f}, {ymax:.2f}]"
    if ref is not None:
        top += "   grey: data, blue: samples"
    if outside:
        top += f"   {outside} of {len(pts)} samples outside"
    draw.text((margin, 4), top, fill=CAPTION_COLOUR, font=font)
    return img


# --------------------------------------------------------------------------- charts
PALETTE = ((31, 90, 200), (220, 90, 30), (40, 150, 60), (170, 40, 160), (120, 120, 120),
           (200, 170, 0), (0, 160, 170), (140, 80, 40))


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi]."""
    span = hi - lo
    if not span > 0:
        return [lo]
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _axis_ticks(lo: float, hi: float, log: bool) -> list[tuple[float, str]]:
    """(position, label) ticks; on a log axis (positions in log10) at whole decades if two fit."""
    if log:
        a, b = math.ceil(lo), math.floor(hi)
        if b - a >= 1:
            stride = max(1, math.ceil((b - a + 1) / 6))
            return [(float(v), f"1e{v}") for v in range(a, b + 1, stride)]
        return [(v, f"{10 ** v:.3g}") for v in _nice_ticks(lo, hi)]
    return [(v, f"{v:.3g}") for v in _nice_ticks(lo, hi)]


def line_chart(series: Sequence[tuple[str, Sequence[float], Sequence[float]]], *, title: str = "",
               xlabel: str = "", ylabel: str = "", log_x: bool = False, log_y: bool = False,
               size: tuple[int, int] = (460, 300), markers: bool = False,
               limits: tuple[float, float, float, float] | None = None,
               dots: Sequence[str] = ()) -> Image.Image:
    """A line chart: each ``(label, xs, ys)`` a polyline in its own colour with a legend.

    A series with an empty label continues the colour of the one before (several paths, one
    legend entry); series whose label is in ``dots`` are drawn as points only (a scatter).

    Points need not be sorted (trajectories are fine); non-finite points, and points ≤ 0 on a log
    axis, are skipped. ``limits = (xmin, xmax, ymin, ymax)`` in data units (default: all points).
    """
    if not series:
        raise ValueError("line_chart needs at least one series")
    clean = []
    for label, xs, ys in series:
        x, y = np.asarray(xs, np.float64).ravel(), np.asarray(ys, np.float64).ravel()
        if x.shape != y.shape:
            raise ValueError(f"series {label!r}: {x.size} x values but {y.size} y values")
        ok = np.isfinite(x) & np.isfinite(y)
        if log_x:
            ok &= x > 0
        if log_y:
            ok &= y > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            tx = np.log10(np.where(ok, x, 1.0)) if log_x else x
            ty = np.log10(np.where(ok, y, 1.0)) if log_y else y
        clean.append((label, tx, ty, ok))
    if limits is None:
        allx = np.concatenate([tx[ok] for _, tx, _, ok in clean] or [np.zeros(1)])
        ally = np.concatenate([ty[ok] for _, _, ty, ok in clean] or [np.zeros(1)])
        allx = allx if allx.size else np.zeros(1)
        ally = ally if ally.size else np.zeros(1)
        xmin, xmax, ymin, ymax = allx.min(), allx.max(), ally.min(), ally.max()
        pad = 0.04 * max(ymax - ymin, 1e-9)
        ymin, ymax = ymin - pad, ymax + pad
    else:
        xmin, xmax, ymin, ymax = limits
        if log_x:
            xmin, xmax = math.log10(xmin), math.log10(xmax)
        if log_y:
            ymin, ymax = math.log10(ymin), math.log10(ymax)
    if xmax <= xmin:
        xmin, xmax = xmin - 1, xmax + 1
    if ymax <= ymin:
        ymin, ymax = ymin - 1, ymax + 1
    w, h = size
    left, right, top, bottom = 58, 12, 22 if title else 8, 36
    img = Image.new("RGB", (w, h), BACKGROUND)
    draw = ImageDraw.Draw(img)
    font = _font()
    pw, ph = w - left - right, h - top - bottom

    def px(x: np.ndarray | float) -> np.ndarray | float:
        return left + (x - xmin) / (xmax - xmin) * pw

    def py(y: np.ndarray | float) -> np.ndarray | float:
        return top + (ymax - y) / (ymax - ymin) * ph

    for v, text in _axis_ticks(xmin, xmax, log_x):
        x = px(v)
        draw.line([x, top + ph, x, top + ph + 4], fill=(0, 0, 0))
        draw.line([x, top, x, top + ph], fill=(235, 235, 235))
        draw.text((x - 12, top + ph + 6), text, fill=CAPTION_COLOUR, font=font)
    for v, text in _axis_ticks(ymin, ymax, log_y):
        y = py(v)
        draw.line([left - 4, y, left, y], fill=(0, 0, 0))
        draw.line([left, y, left + pw, y], fill=(235, 235, 235))
        draw.text((2, y - 7), text, fill=CAPTION_COLOUR, font=font)
    draw.rectangle([left, top, left + pw, top + ph], outline=(0, 0, 0))
    if title:
        draw.text((left, 3), title, fill=CAPTION_COLOUR, font=font)
    if xlabel:
        draw.text((left + pw / 2 - 3 * len(xlabel), h - 15), xlabel, fill=CAPTION_COLOUR, font=font)
    if ylabel:
        draw.text((left + 4, top + 2), ylabel, fill=(90, 90, 90), font=font)
    colours, k = [], -1
    for label, *_ in clean:
        k += 1 if (label or k < 0) else 0
        colours.append(PALETTE[k % len(PALETTE)])
    order = sorted(range(len(clean)), key=lambda i: clean[i][0] not in dots)  # scatters below
    for i in order:
        label, tx, ty, ok = clean[i]
        colour = colours[i]
        pts = [(float(a), float(b)) for a, b, good in zip(px(tx), py(ty), ok, strict=True) if good]
        if len(pts) > 1 and label not in dots:
            draw.line(pts, fill=colour, width=2)
        if markers or len(pts) == 1 or label in dots:
            r = 1.5 if label in dots else 2.5
            for a, b in pts:
                draw.ellipse([a - r, b - r, a + r, b + r], fill=colour)
    legend_y = top + 4
    for (label, *_rest), colour in zip(clean, colours, strict=True):
        if not label:
            continue
        x0 = left + pw - 8 - int(draw.textlength(label, font=font)) - 18
        draw.line([x0, legend_y + 7, x0 + 14, legend_y + 7], fill=colour, width=3)
        draw.text((x0 + 18, legend_y), label, fill=CAPTION_COLOUR, font=font)
        legend_y += 14
    return img


def histogram_chart(groups: Sequence[tuple[str, Sequence[float]]], bins: int = 30, *,
                    title: str = "", xlabel: str = "", size: tuple[int, int] = (460, 300)
                    ) -> Image.Image:
    """Overlaid histograms (as density outlines over shared bins) of each ``(label, values)``."""
    values = [np.asarray(v, np.float64).ravel() for _, v in groups]
    finite = np.concatenate([v[np.isfinite(v)] for v in values] or [np.zeros(1)])
    if finite.size == 0:
        raise ValueError("histogram_chart got no finite values")
    lo, hi = float(finite.min()), float(finite.max())
    edges = np.linspace(lo, hi if hi > lo else lo + 1, bins + 1)
    series = []
    for (label, _), v in zip(groups, values, strict=True):
        dens, _ = np.histogram(v[np.isfinite(v)], bins=edges, density=True)
        xs = np.repeat(edges, 2)[1:-1]
        series.append((label, xs, np.repeat(dens, 2)))
    return line_chart(series, title=title, xlabel=xlabel, ylabel="density", size=size)


def png_bytes(image: Image.Image) -> bytes:
    """The picture encoded as PNG."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _data_limits(p: np.ndarray, robust: bool) -> tuple[float, float, float, float]:
    """(xmin, xmax, ymin, ymax) for :func:`scatter`: the box of ``p`` (its 1–99 % percentile box
    when ``robust``) widened by 5 % (10 % when robust) of its span on each side."""
    p = p[np.isfinite(p).all(axis=1)]
    if p.size == 0:
        return (-1.0, 1.0, -1.0, 1.0)
    lo, hi = (np.percentile(p, 1, axis=0), np.percentile(p, 99, axis=0)) if robust else (
        p.min(axis=0), p.max(axis=0))
    span = np.maximum(hi - lo, 1e-9)
    pad = 0.10 if robust else 0.05
    lo, hi = lo - pad * span, hi + pad * span
    return (float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1]))


def save(image: Image.Image, path: str | os.PathLike[str]) -> None:
    """Save atomically (temp file in the same folder, fsync, rename): readers never see half a
    PNG, and an interrupted save keeps the previous picture."""
    from .io import atomic_write

    buf = io.BytesIO()
    fmt = os.path.splitext(os.fspath(path))[1].lstrip(".").upper() or "PNG"
    image.save(buf, format="JPEG" if fmt == "JPG" else fmt)
    atomic_write(path, buf.getvalue())
