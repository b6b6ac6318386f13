"""The detection report's pictures: precision-recall curves per file, a grid of images with the ground truth
beside every file's boxes, and mAP against size.

Conventions (the detection package's): ground truth per image is a float32 (n, 5) array of rows
(class_id, ymin, xmin, ymax, xmax); detections per image are any object with `boxes` (k, 4) [ymin, xmin, ymax,
xmax], `scores` (k,) and `classes` (k,); all corners are fractions of the image side. Files are named by their
label ('baseline-float32', 'qat-int8').

Like plots.py, figures are built on `matplotlib.figure.Figure` directly (no pyplot, no GUI backend, no global
figure state to close) and saved through `save_figure`: atomic, and the same bytes for the same input. No
TensorFlow.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps, patheffects
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from compresslab import variants
from compresslab.errors import UserError
from compresslab.reporting.metrics import pareto_front
from compresslab.reporting.plots import (DPI, TradeoffPoint, no_data, tradeoff_legends, variant_colours,
                                         draw_tradeoff, interval_handles, mode_markers, save_figure)

GROUND_TRUTH_COLOUR = "#1a9e1a"   # green
PREDICTION_COLOUR = "#e8431c"     # red-orange
MEAN_COLOUR = "black"
PANEL_SIDE = 3.4                  # inches per precision-recall panel
CELL_SIDE = 2.5                   # inches per grid cell: a 96x96 image is shown at ~375 px, text stays legible
MAX_PANEL_COLUMNS = 3


@dataclass(frozen=True)
class PrDrawing:
    """What `draw_pr_curves` drew."""

    path: Path
    panels: tuple[str, ...]            # file labels, one panel each, in the order drawn
    shape: tuple[int, int]             # the panel grid (rows, columns)
    curves: dict[str, int]             # per label, the number of class curves drawn (the mean line not counted)


@dataclass(frozen=True)
class GridDrawing:
    """What `draw_detection_grid` drew."""

    path: Path
    columns: tuple[str, ...]           # 'ground truth', then the file labels
    shape: tuple[int, int]             # (images, 1 + labels), read back from the figure's axes
    boxes: tuple[tuple[int, ...], ...]  # boxes drawn per image (row) and column, counted on the axes

    @property
    def boxes_per_column(self) -> dict[str, int]:
        return {name: sum(row[j] for row in self.boxes) for j, name in enumerate(self.columns)}


@dataclass(frozen=True)
class MapPoint:
    """One file on the mAP-against-size plot."""

    label: str                                    # 'variant-mode'
    kb: float                                     # gzipped size in KB
    map: float                                    # mAP@[.5:.95] as a fraction
    interval: tuple[float, float] | None = None   # its 95 % interval (low, high), fractions


# ------------------------------------------------------------------------------------- precision-recall


def draw_pr_curves(curves: Mapping[str, Mapping[str, Mapping | None]], path: str | Path,
                   title: str = "Precision-recall at IoU 0.5 (COCO interpolated)") -> PrDrawing:
    """One panel per file: each class's precision-recall curve, and their mean as a thick black line.

    Args:
      curves: curves[label][class_name] = {'recall': [...], 'precision': [...]} (COCO's 101 recall points).
        A class that is None, missing, or whose precision is all negative (COCO's -1: no ground truth) is not
        drawn and not averaged; negative precision values at single points are left out of the mean there.
      path: the PNG to write.
      title: the figure title.

    Returns:
      A PrDrawing: the panels, their grid, and how many class curves each panel holds.
    """
    labels = list(curves)
    classes = list(dict.fromkeys(name for label in labels for name, curve in (curves[label] or {}).items()
                                 if _curve(curve) is not None))
    colours = dict(zip(classes, _palette(len(classes))))
    columns = max(1, min(MAX_PANEL_COLUMNS, len(labels)))
    rows = max(1, math.ceil(len(labels) / columns))
    fig = Figure(figsize=(PANEL_SIDE * columns + (1.8 if classes else 0), PANEL_SIDE * rows + 0.4), dpi=DPI,
                 layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False, sharex=True, sharey=True)
    drawn: dict[str, int] = {}
    for ax in axes.flat[len(labels):]:
        ax.set_axis_off()
    if not labels:
        no_data(axes[0, 0], "no precision-recall curves")
        return PrDrawing(save_figure(fig, path), (), (rows, columns), {})
    for ax, label in zip(axes.flat, labels):
        found = {name: _curve(curve) for name, curve in (curves[label] or {}).items()}
        found = {name: curve for name, curve in found.items() if curve is not None}
        for name, (recall, precision) in found.items():
            ax.plot(recall, np.where(precision < 0, np.nan, precision), color=colours[name], linewidth=1.3,
                    alpha=0.85)
        drawn[label] = len(found)
        heading = label
        if found:
            recall, mean = _mean_curve(list(found.values()))
            ax.plot(recall, mean, color=MEAN_COLOUR, linewidth=2.8, zorder=3)
            heading += f"\nmAP@.5 {np.nanmean(mean):.3f}"   # the area under COCO's 101-point curve
        else:
            ax.text(0.5, 0.5, "no class has a curve", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(heading, fontsize=10)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_aspect("equal")
        ax.grid(True, alpha=0.3)
    for column in range(min(columns, len(labels))):   # the lowest panel in each column carries the recall axis
        lowest = axes[(len(labels) - 1 - column) // columns, column]
        lowest.xaxis.set_tick_params(labelbottom=True)
        lowest.set_xlabel("recall")
    for ax in axes[:, 0]:
        ax.set_ylabel("precision")
    if classes:
        handles = [Line2D([], [], color=colours[name], linewidth=1.5, label=name) for name in classes]
        handles.append(Line2D([], [], color=MEAN_COLOUR, linewidth=2.8, label="mean over classes"))
        fig.legend(handles=handles, loc="outside right upper", fontsize=8, title="class", title_fontsize=9)
    fig.suptitle(title, fontsize=12)
    return PrDrawing(save_figure(fig, path), tuple(labels), (rows, columns), drawn)


def _curve(curve: Mapping | None) -> tuple[np.ndarray, np.ndarray] | None:
    """(recall, precision) as arrays, or None when there is nothing to draw."""
    if not curve or curve.get("recall") is None or curve.get("precision") is None:
        return None
    recall = np.asarray(curve["recall"], dtype=float).ravel()
    precision = np.asarray(curve["precision"], dtype=float).ravel()
    if recall.shape != precision.shape:
        raise UserError(f"a precision-recall curve has {recall.size} recall and {precision.size} precision "
                        f"values: they must pair up")
    if recall.size == 0 or not np.any(precision >= 0):
        return None
    return recall, precision


def _mean_curve(found: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """The mean precision over classes at each recall point (classes sharing COCO's recall grid, else
    interpolated onto the first one's)."""
    grid = found[0][0]
    stacked = []
    for recall, precision in found:
        values = np.where(precision < 0, np.nan, precision)
        if recall.shape != grid.shape or not np.allclose(recall, grid):
            values = np.interp(grid, recall, values)
        stacked.append(values)
    stacked = np.vstack(stacked)
    counted = np.sum(~np.isnan(stacked), axis=0)
    mean = np.divide(np.nansum(stacked, axis=0), counted, out=np.full(grid.shape, np.nan), where=counted > 0)
    return grid, mean


def _palette(n: int) -> list[tuple]:
    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


# ------------------------------------------------------------------------------------- the image grid


def draw_detection_grid(images: np.ndarray, ground_truth: Sequence[np.ndarray], detections: Mapping[str, Sequence],
                        class_names: Sequence[str], path: str | Path, score_threshold: float = 0.5,
                        max_images: int = 6, overlay_truth: bool = True) -> GridDrawing:
    """Images down the rows; the ground truth in the first column, each file's detections in the next ones.

    Ground-truth boxes are green with their class name; predicted boxes at or above `score_threshold` are
    red-orange with 'class score', the highest score drawn last (on top); with `overlay_truth` the ground
    truth is also outlined, thin, dashed and without text, under each file's boxes, so a miss or a shifted box
    shows without looking back at the first column. Images are shown enlarged with
    nearest-neighbour pixels so that small inputs (96x96) and the text on them stay legible. Under each cell:
    how many boxes it shows.

    Args:
      images: (N, H, W, C) floats in [0, 1], C 1 or 3 (or (N, H, W) grayscale).
      ground_truth: per image, (n, 5) rows (class_id, ymin, xmin, ymax, xmax); n may be 0.
      detections: label -> per image, an object with boxes (k, 4), scores (k,), classes (k,); columns follow
        the mapping's order.
      class_names: names by class id (an id past the end is written 'class <id>').
      path: the PNG to write.
      score_threshold: the lowest score drawn.
      max_images: how many of the first images to show.
      overlay_truth: outline the ground truth faintly in the detection columns too (not counted as boxes).

    Returns:
      A GridDrawing: the columns, the axes grid's shape, and the labelled boxes drawn per cell (ground truth
    in the first column, detections in the others; the overlaid outlines are not counted).
    """
    images = np.asarray(images, dtype=float)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise UserError(f"images must be (N, H, W, C) with C 1 or 3, not shape {images.shape}")
    count = min(max_images, len(images))
    labels = list(detections)
    for name, per_image in [("ground truth", ground_truth), *((label, detections[label]) for label in labels)]:
        if len(per_image) < count:
            raise UserError(f"{name} has {len(per_image)} entries for {count} images drawn: one per image is needed")
    columns = ["ground truth", *labels]
    fig = Figure(figsize=(CELL_SIDE * len(columns), CELL_SIDE * max(1, count) + 0.5), dpi=DPI, layout="constrained")
    axes = fig.subplots(max(1, count), len(columns), squeeze=False)
    if count == 0:
        for ax in axes.flat:
            ax.set_axis_off()
        no_data(axes[0, 0], "no images")
        return GridDrawing(save_figure(fig, path), tuple(columns), (0, len(columns)), ())
    names = [str(name) for name in class_names]
    boxes = []
    for i in range(count):
        picture = np.clip(images[i], 0.0, 1.0)
        row = []
        for j, ax in enumerate(axes[i]):
            # extent in fractions: box corners are drawn as given, whatever the image's pixel size.
            if picture.shape[-1] == 1:
                ax.imshow(picture[..., 0], cmap="gray", vmin=0, vmax=1, extent=(0, 1, 1, 0), interpolation="nearest")
            else:
                ax.imshow(picture, extent=(0, 1, 1, 0), interpolation="nearest")
            ax.set_xlim(0, 1)
            ax.set_ylim(1, 0)
            ax.set_xticks([])
            ax.set_yticks([])
            truth = np.asarray(ground_truth[i], dtype=float).reshape(-1, 5)
            if j == 0:
                for class_id, *corners in truth:
                    _box(ax, corners, _class_name(names, class_id), GROUND_TRUTH_COLOUR)
                ax.set_ylabel(f"image {i}", fontsize=9)
                caption = f"{len(truth)} object{'s' * (len(truth) != 1)}"
            else:
                if overlay_truth:
                    for _, *corners in truth:
                        _outline(ax, corners)
                found = detections[labels[j - 1]][i]
                scores = np.asarray(getattr(found, "scores", []), dtype=float).ravel()
                corners = np.asarray(getattr(found, "boxes", []), dtype=float).reshape(-1, 4)
                classes = np.asarray(getattr(found, "classes", [])).ravel()
                keep = [k for k in np.argsort(scores, kind="stable") if scores[k] >= score_threshold]
                for k in keep:   # ascending: the most confident box ends on top
                    _box(ax, corners[k], f"{_class_name(names, classes[k])} {scores[k]:.2f}", PREDICTION_COLOUR)
                caption = f"{len(keep)} box{'es' * (len(keep) != 1)} ≥ {score_threshold:g}"
            ax.set_xlabel(caption, fontsize=8, labelpad=2)
            if i == 0:
                ax.set_title(columns[j], fontsize=10, fontweight="bold")
            row.append(sum(patch.get_gid() == _LABELLED for patch in ax.patches))
        boxes.append(tuple(row))
    overlay = ", dashed under the detections" if overlay_truth else ""
    fig.suptitle(f"Detections: boxes with score ≥ {score_threshold:g} (green: ground truth{overlay})", fontsize=11)
    shape = axes.shape
    return GridDrawing(save_figure(fig, path), tuple(columns), (int(shape[0]), int(shape[1])), tuple(boxes))


def _class_name(names: list[str], class_id) -> str:
    index = int(class_id)
    return names[index] if 0 <= index < len(names) else f"class {index}"


_LABELLED = "labelled-box"   # the gid of the boxes `draw_detection_grid` counts
_CONTRAST = [patheffects.Stroke(linewidth=3.6, foreground="black", alpha=0.6), patheffects.Normal()]


def _box(ax, corners, text: str, colour: str) -> None:
    """One box from [ymin, xmin, ymax, xmax] fractions, edged in dark so that it shows on any image, its
    text on a filled tab at its top-left corner (inside the box when the box touches the image's top)."""
    ymin, xmin, ymax, xmax = (float(np.clip(value, 0.0, 1.0)) for value in corners)
    ax.add_patch(Rectangle((xmin, ymin), xmax - xmin, ymax - ymin, fill=False, edgecolor=colour, linewidth=2.0,
                           path_effects=_CONTRAST, gid=_LABELLED, zorder=3))
    inside = ymin < 0.08
    ax.text(xmin, ymin, text, fontsize=7, color="white", va="top" if inside else "bottom", ha="left",
            clip_on=True, zorder=4, bbox={"facecolor": colour, "edgecolor": "none", "alpha": 0.85, "pad": 1.0})


def _outline(ax, corners) -> None:
    """A ground-truth box under a file's detections: thin, dashed, no text."""
    ymin, xmin, ymax, xmax = (float(np.clip(value, 0.0, 1.0)) for value in corners)
    ax.add_patch(Rectangle((xmin, ymin), xmax - xmin, ymax - ymin, fill=False, edgecolor=GROUND_TRUTH_COLOUR,
                           linewidth=1.2, linestyle=(0, (3, 2)), zorder=2))


# ------------------------------------------------------------------------------------- mAP against size


def draw_map_tradeoff(points: Sequence[MapPoint | Mapping], path: str | Path,
                      band: tuple[float, float] | None = None, band_label: str = "float control",
                      title: str = "mAP vs. size") -> Path:
    """mAP@[.5:.95] against gzipped size (KB), through the classification report's `draw_tradeoff`.

    Each point with its 95 % interval as a vertical error bar and its label; colour per variant and marker
    per mode as on the accuracy plot; the Pareto front as a step line; `band`, the float control's interval,
    as a shaded strip. The size axis is logarithmic when the sizes span more than 10x (draw_tradeoff's rule).

    Args:
      points: MapPoint objects, or mappings with keys label, kb, map and optionally interval (low, high);
        points without a positive size or an mAP are not drawn.
      path: the PNG to write.
      band: the float control's 95 % mAP interval (low, high), fractions; None draws no band.
      band_label: the band's legend name.
      title: the axes title.

    Returns:
      The path written.
    """
    found = [point for point in map(_map_point, points) if point.kb and point.kb > 0 and point.map is not None]
    fig = Figure(figsize=(9.0, 5.5), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    if not found:
        no_data(ax, "no file has both a size and an mAP")
        return save_figure(fig, path)
    rows = [dict(zip(("variant", "mode"), variants.split_label(point.label))) for point in found]
    colours = variant_colours(rows)
    markers = mode_markers(rows)
    on_front = pareto_front([(point.kb, point.map) for point in found])
    draw_tradeoff(ax, [TradeoffPoint(point.kb, point.map, point.label, colours[row["variant"]], markers[row["mode"]],
                                     front, point.interval, row["variant"])
                       for point, row, front in zip(found, rows, on_front)],
                  xlabel="gzipped size (KB, smaller is better)", title=title, band=band)
    # draw_tradeoff labels the front only; every file is labelled here, the others in grey.
    for point, front in zip(found, on_front):
        if not front:
            ax.annotate(point.label, (point.kb, point.map), xytext=(6, -10), textcoords="offset points", fontsize=7,
                        color="dimgrey")
    ax.set_ylabel("mAP@[.5:.95] (COCO)")
    tradeoff_legends(ax, colours, markers, interval_handles(any(p.interval for p in found),
                                                             band_label if band is not None else None))
    return save_figure(fig, path)


def _map_point(point: MapPoint | Mapping) -> MapPoint:
    if isinstance(point, MapPoint):
        return point
    interval = point.get("interval")
    return MapPoint(str(point["label"]), point.get("kb"), point.get("map"),
                    None if interval is None or None in tuple(interval) else tuple(interval))
