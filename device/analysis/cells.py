"""Find the white cells in a whole field.

Stain-based: leukocyte nuclei take up the blue-violet stain far more than red
cells or background, so ``B - G`` separates them with one threshold (Otsu per
field, floored) on a May-Grunwald-Giemsa smear on white glass; a field of any
other look (a rapid stain's yellow glass, a warm lamp, a faded or thin stain) is
read through an optical-density map relative to its own glass (``stain_map``). Nuclear
lobes of one cell are joined by a closing scaled to the cell size; components
much larger than one nucleus are split by a distance-transform watershed; the
box then grows from the nucleus to the whole cell by a measured ratio. Chosen
over a learned detector by measurement (``python -m bench.detect_bccd``): it
meets the recall/precision targets on BCCD in a few milliseconds on one core.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from device.schema import below, check, setting


@dataclass(frozen=True)
class CellFinderSettings:
    """The ``[cells]`` section of the config file, each value with its range (device/schema.py)."""
    # Stain threshold on B - G (0..255); 0 = Otsu on the field, floored at min_threshold.
    threshold: float = setting(0.0, ge=0, le=255)
    min_threshold: float = setting(55.0, ge=0, le=255)
    # Physical sizes (micrometres), converted at the field's measured scale, so any
    # objective, camera or resolution gives the same finder. Values measured on BCCD.
    min_nucleus_um2: float = setting(17.0, gt=0, le=1000)  # smallest nucleus kept (platelets are far smaller)
    typical_nucleus_um2: float = setting(26.0, gt=0, le=1000)  # floor of the "one nucleus" size used to split clumps
    join_um: float = setting(2.1, gt=0, le=20)  # closing kernel: joins the lobes of one nucleus
    open_um: float = setting(0.6, gt=0, le=20)  # opening kernel: drops stain specks
    cell_scale: float = setting(1.35, ge=1, le=5)  # box side / nucleus side: the cytoplasm around the nucleus
    min_box_um: float = setting(8.2, gt=0, le=100)  # a cell box is at least this wide
    split_ratio: float = setting(2.2, ge=1, le=20)  # components larger than this x the median nucleus are split
    max_cells: int = setting(60, ge=1, le=1000)
    # The finder runs on a copy resampled to this scale, so its cost does not grow
    # with the camera's megapixels (crops for the classifier come from the full frame).
    working_um_per_px: float = setting(0.2, ge=0.05, le=1.0)
    # Skip cells whose nucleus touches the field edge: they are incomplete, would be
    # classified from part of a cell, and may be counted again in the next field. On by default (issue 21: two
    # edge fragments of neighbours, called blasts, alone raised "refer" on one uploaded marrow field).
    skip_edge_cells: bool = True
    edge_margin: int = setting(2, ge=0, le=100)

    def __post_init__(self):
        check(self)
        below(self, "min_nucleus_um2", "typical_nucleus_um2")


@dataclass(frozen=True)
class FoundCell:
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 in pixels, clipped to the field
    nucleus_box: tuple[int, int, int, int]
    nucleus_area: int
    score: float  # mean stain strength of the nucleus


def glass_colour(rgb: np.ndarray) -> np.ndarray:
    """The field's light through bare glass (R, G, B, plus one): the median colour of its
    brightest tenth. A rapid stain's yellow background, a warm lamp or a camera's white
    balance all show here."""
    flat = rgb.reshape(-1, 3)
    if len(flat) > 40000:  # a subsample is enough to find the brightest tenth
        flat = flat[:: len(flat) // 40000]
    lum = flat.astype(np.int32).sum(1)
    bright = flat[lum >= np.percentile(lum, 90)]
    return np.median(bright, axis=0).astype(np.float32) + 1.0


def stain_density(rgb: np.ndarray, glass: np.ndarray) -> float:
    """How densely the field is stained: the median green optical density of its stained pixels
    (BCCD, PBC: 0.22-0.42 from p5 to p95; BCCD faded to 0.55 x its density: 0.14-0.18)."""
    od = np.log(glass[1] / (rgb[..., 1].astype(np.float32) + 1.0))
    stained = od[od > 0.1]
    return float(np.median(stained)) if stained.size > 100 else _REFERENCE_DENSITY


@dataclass(frozen=True)
class StainLook:
    tint: float  # log(B/G) of the glass: 0 white, below 0 yellow (rapid stains: about -0.36)
    density: float  # stain_density
    map: str  # "b-g" (MGG-like on white glass) or "od" (any other look)


# May-Grunwald-Giemsa on near-white glass, as the training labs and BCCD show it (glass tint
# -0.13..+0.15, density >= 0.22; a crowded marrow crop's brightest tenth is pale blue cytoplasm, up
# to +0.3): the B - G map every training crop was cut with stays, so the model sees the same cells it
# was trained on. Any other look (yellow glass: a rapid stain, a warm lamp) takes the optical-density map.
_STANDARD_TINT = (-0.2, 0.35)
_STANDARD_DENSITY = 0.2
# The OD map: one unit is this much log(B/G) beyond the glass's, so the B - G floor (55) sits at a
# B/G ratio of 1.41 x the glass's, about where it sits for a nucleus on white glass.
_MAP_GAIN = 160.0
# A faded field's map is boosted until its stained matter is as dense as a normal smear's.
_REFERENCE_DENSITY = 0.25
_MAX_BOOST = 2.5


def stain_look(rgb: np.ndarray) -> StainLook:
    glass = glass_colour(rgb)
    tint = float(np.log(glass[2] / glass[1]))
    density = stain_density(rgb, glass)
    standard = _STANDARD_TINT[0] <= tint <= _STANDARD_TINT[1] and density >= _STANDARD_DENSITY
    return StainLook(round(tint, 4), round(density, 4), "b-g" if standard else "od")


def stain_map(rgb: np.ndarray, look: StainLook | None = None) -> np.ndarray:
    """Nucleus map, 0..255. Romanowsky stains (MGG, Wright, Giemsa, Leishman, rapid Field's-type)
    colour nuclei purple to blue-violet: azure-DNA absorbs green more than blue, while red cells and
    eosin absorb both alike. On a standard look that is ``B - G``; on any other, the optical-density
    difference OD_green - OD_blue relative to the glass (a log ratio: blind to the glass's tint and
    the lamp's brightness, which shift a fixed B - G floor), boosted on a faded field."""
    look = look or stain_look(rgb)
    if look.map == "b-g":
        b = rgb[..., 2].astype(np.int16)
        g = rgb[..., 1].astype(np.int16)
        return np.clip(b - g, 0, 255).astype(np.uint8)
    f = rgb.astype(np.float32) + 1.0
    ratio = np.log(f[..., 2] / f[..., 1]) - look.tint
    boost = float(np.clip(_REFERENCE_DENSITY / max(look.density, 1e-3), 1.0, _MAX_BOOST))
    return np.clip(ratio * (_MAP_GAIN * boost), 0, 255).astype(np.uint8)


def _odd(px: float) -> int:
    return max(3, int(round(px)) | 1)


def nucleus_mask(rgb: np.ndarray, s: CellFinderSettings, um_per_px: float) -> tuple[np.ndarray, np.ndarray]:
    blur = _odd(0.4 / um_per_px)
    stain = cv2.GaussianBlur(stain_map(rgb), (blur, blur), 0)
    if not s.threshold:
        otsu, _ = cv2.threshold(stain, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        t = max(float(otsu), s.min_threshold)
    else:
        t = s.threshold
    mask = (stain > t).astype(np.uint8)
    k_open = _odd(s.open_um / um_per_px)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k_open, k_open)))
    k_join = _odd(s.join_um / um_per_px)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k_join, k_join)))
    return mask, stain


def _split(component: np.ndarray) -> list[np.ndarray]:
    """Split touching nuclei with a watershed on the distance transform."""
    dist = cv2.distanceTransform(component, cv2.DIST_L2, 5)
    peaks = (dist > 0.6 * dist.max()).astype(np.uint8)
    n, markers = cv2.connectedComponents(peaks)
    if n - 1 < 2:
        return [component]
    markers = markers + 1
    markers[component == 0] = 0
    unknown = (component > 0) & (peaks == 0)
    markers[unknown] = 0
    ws = cv2.watershed(cv2.cvtColor(component * 255, cv2.COLOR_GRAY2BGR), markers.astype(np.int32))
    parts = [(ws == lbl).astype(np.uint8) for lbl in range(2, n + 1)]
    return [p for p in parts if p.any()] or [component]


def find_cells(rgb: np.ndarray, settings: CellFinderSettings | None = None,
               um_per_px: float | None = None) -> list[FoundCell]:
    """White cells of ``rgb``, whose pixels are ``um_per_px`` micrometres wide
    (default: the working scale, i.e. ``rgb`` already resampled by ``locate_cells``)."""
    s = settings or CellFinderSettings()
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB field, got shape {rgb.shape}")
    um = float(um_per_px or s.working_um_per_px)
    px2 = um * um  # um^2 per pixel
    h, w = rgb.shape[:2]
    mask, stain = nucleus_mask(rgb, s, um)
    n, lab, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    min_area = s.min_nucleus_um2 / px2
    comps = [i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] >= min_area]
    if not comps:
        return []
    median_area = float(np.median([stats[i, cv2.CC_STAT_AREA] for i in comps]))
    typical = max(median_area, s.typical_nucleus_um2 / px2)
    nuclei: list[tuple[np.ndarray, tuple[int, int]]] = []
    for i in comps:
        x, y, cw, ch, area = stats[i]
        comp = (lab[y : y + ch, x : x + cw] == i).astype(np.uint8)
        pieces = _split(comp) if area > s.split_ratio * typical else [comp]
        nuclei += [(p, (x, y)) for p in pieces]
    found = []
    side_min = s.min_box_um / um
    for piece, (ox, oy) in nuclei:
        ys, xs = np.nonzero(piece)
        if len(xs) < min_area:
            continue
        nx1, ny1, nx2, ny2 = ox + xs.min(), oy + ys.min(), ox + xs.max() + 1, oy + ys.max() + 1
        m = s.edge_margin
        if s.skip_edge_cells and (nx1 <= m or ny1 <= m or nx2 >= w - m or ny2 >= h - m):
            continue
        cx, cy = (nx1 + nx2) / 2.0, (ny1 + ny2) / 2.0
        half_w = max((nx2 - nx1) * s.cell_scale, side_min) / 2.0
        half_h = max((ny2 - ny1) * s.cell_scale, side_min) / 2.0
        box = (max(0, int(round(cx - half_w))), max(0, int(round(cy - half_h))),
               min(w, int(round(cx + half_w))), min(h, int(round(cy + half_h))))
        score = float(stain[oy + ys, ox + xs].mean())
        found.append(FoundCell(box, (int(nx1), int(ny1), int(nx2), int(ny2)), int(len(xs)), score))
    found.sort(key=lambda c: -c.nucleus_area)
    return found[: s.max_cells]


def resample(rgb: np.ndarray, factor: float) -> np.ndarray:
    """``rgb`` scaled by ``factor`` (area averaging when shrinking)."""
    if abs(factor - 1.0) < 1e-3:
        return rgb
    from device.analysis.preprocess import shrink_to

    h, w = rgb.shape[:2]
    return shrink_to(rgb, max(1, int(round(w * factor))), max(1, int(round(h * factor))))


def _scaled_box(box, fx: float, fy: float, w: int, h: int) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = box
    return (max(0, int(round(x1 * fx))), max(0, int(round(y1 * fy))),
            min(w, int(round(x2 * fx))), min(h, int(round(y2 * fy))))


def locate_cells(rgb: np.ndarray, um_per_px: float, settings: CellFinderSettings | None = None,
                 work: np.ndarray | None = None) -> list[FoundCell]:
    """White cells of a full-resolution field whose pixels are ``um_per_px`` wide:
    found on a copy at the working scale (``work``, made here if not given), boxes in
    the field's own pixels."""
    s = settings or CellFinderSettings()
    if work is None:
        work = resample(rgb, um_per_px / s.working_um_per_px)
    h, w = rgb.shape[:2]
    fx, fy = w / work.shape[1], h / work.shape[0]
    out = []
    for c in find_cells(work, s):
        out.append(FoundCell(_scaled_box(c.box, fx, fy, w, h), _scaled_box(c.nucleus_box, fx, fy, w, h),
                             int(round(c.nucleus_area * fx * fy)), c.score))
    return out


def central_cell(found: list[FoundCell], shape: tuple[int, ...]) -> FoundCell | None:
    """The found cell nearest the image centre: the one a single-cell image is about."""
    h, w = shape[:2]
    if not found:
        return None
    return min(found, key=lambda f: ((f.box[0] + f.box[2]) / 2 - w / 2) ** 2 + ((f.box[1] + f.box[3]) / 2 - h / 2) ** 2)
