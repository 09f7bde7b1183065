"""A quick-look PNG (numpy + zlib only): three orthogonal slices through the tumour.

Top row: FLAIR with the segmentation overlaid (edema green, NCR blue, ET red, as in the
paper's Fig. 1); bottom row: FLAIR with the uncertainty map in orange. Radiological
convention is not attempted: the images are RAS, patient left on the right of the sagittal.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from spikeseg.runtime.atomic import atomic_path

_COLOURS = {"ed": (0, 200, 0), "ncr": (40, 90, 255), "et": (255, 30, 30)}
#: the QC verdict's banner colour: green ok, amber review, grey unchecked
_VERDICT_COLOURS = {"ok": (0, 150, 60), "review": (230, 140, 0), "unchecked": (110, 110, 110)}
#: 5x7 glyphs for the banner's words (no font library in the runtime)
_GLYPHS = {
    "Q": ["01110", "10001", "10001", "10001", "10101", "10010", "01101"],
    "C": ["01110", "10001", "10000", "10000", "10000", "10001", "01110"],
    "O": ["01110", "10001", "10001", "10001", "10001", "10001", "01110"],
    "K": ["10001", "10010", "10100", "11000", "10100", "10010", "10001"],
    "R": ["11110", "10001", "10001", "11110", "10100", "10010", "10001"],
    "E": ["11111", "10000", "10000", "11110", "10000", "10000", "11111"],
    "V": ["10001", "10001", "10001", "10001", "10001", "01010", "00100"],
    "I": ["01110", "00100", "00100", "00100", "00100", "00100", "01110"],
    "W": ["10001", "10001", "10001", "10101", "10101", "10101", "01010"],
    "U": ["10001", "10001", "10001", "10001", "10001", "10001", "01110"],
    "N": ["10001", "11001", "10101", "10011", "10001", "10001", "10001"],
    "H": ["10001", "10001", "10001", "11111", "10001", "10001", "10001"],
    "D": ["11110", "10001", "10001", "10001", "10001", "10001", "11110"],
    " ": ["00000"] * 7,
}


def write_png(path: str | Path, rgb: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 image as PNG, atomically."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))
    with atomic_path(path, suffix=".png") as tmp:
        tmp.write_bytes(png)


def _grey(img: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(img, [1, 99.5]) if img.any() else (0.0, 1.0)
    g = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
    return np.repeat((g * 255).astype(np.uint8)[..., None], 3, axis=-1)


def _overlay(base: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int], alpha: np.ndarray | float) -> np.ndarray:
    out = base.astype(np.float32)
    a = (np.asarray(alpha, dtype=np.float32) * mask)[..., None]
    out = out * (1 - a) + np.array(colour, np.float32) * a
    return out.astype(np.uint8)


def _panel(flair: np.ndarray, labels: np.ndarray, unc: np.ndarray, conv) -> tuple[np.ndarray, np.ndarray]:
    # slices are (first axis, second axis); show with the second axis pointing up
    f, l, u = (np.flipud(a.T) for a in (flair, labels, unc))
    seg = _grey(f)
    for key, value in (("ed", conv.ed), ("ncr", conv.ncr), ("et", conv.et)):
        seg = _overlay(seg, l == value, _COLOURS[key], 0.55)
    unc_img = _overlay(_grey(f), np.ones_like(u, bool), (255, 140, 0), np.clip(u / 0.5, 0, 1) * 0.9)
    return seg, unc_img


def banner(width: int, verdict: str, scale: int = 3) -> np.ndarray:
    """A strip in the verdict's colour with ``QC <VERDICT>`` written in white."""
    text = f"QC {verdict.upper()}"
    glyphs = np.concatenate([np.pad(np.array([[c == "1" for c in row] for row in _GLYPHS[ch]]), ((0, 0), (0, 1)))
                             for ch in text], axis=1)
    glyphs = np.repeat(np.repeat(glyphs, scale, axis=0), scale, axis=1)
    strip = np.empty((glyphs.shape[0] + 4 * scale, width, 3), np.uint8)
    strip[...] = _VERDICT_COLOURS[verdict]
    w = min(glyphs.shape[1], width - 4 * scale)
    strip[2 * scale:2 * scale + glyphs.shape[0], 2 * scale:2 * scale + w][glyphs[:, :w]] = 255
    return strip


def quicklook(path: str | Path, flair: np.ndarray, labels: np.ndarray, uncertainty: np.ndarray, conv,
              verdict: str | None = None) -> None:
    """Three orthogonal slices through the tumour's centre (the volume centre if none); with a
    QC ``verdict``, a banner above them says it."""
    fg = np.argwhere(labels > 0)
    centre = fg.mean(0).astype(int) if fg.size else np.array(labels.shape) // 2
    panels = []
    for axis in range(3):
        take = [slice(None)] * 3
        take[axis] = centre[axis]
        panels.append(_panel(flair[tuple(take)], labels[tuple(take)], uncertainty[tuple(take)], conv))
    height = max(p[0].shape[0] for p in panels)

    def pad(img: np.ndarray) -> np.ndarray:
        return np.pad(img, ((0, height - img.shape[0]), (0, 4), (0, 0)))

    top = np.concatenate([pad(p[0]) for p in panels], axis=1)
    bottom = np.concatenate([pad(p[1]) for p in panels], axis=1)
    image = np.concatenate([top, np.zeros((4, top.shape[1], 3), np.uint8), bottom], axis=0)
    zoom = max(1, 480 // image.shape[0])  # coarse grids (2 mm phantoms) are enlarged to be legible
    image = np.repeat(np.repeat(image, zoom, axis=0), zoom, axis=1)
    if verdict is not None:
        image = np.concatenate([banner(image.shape[1], verdict), image], axis=0)
    write_png(path, image)
