"""Rules every report figure follows, and a description of what a figure drew.

`save` writes a figure's PNG and its JSON sidecar; the sidecar's `axes` (see `describe_axes`) is
read back from matplotlib after layout: each panel's ticks and tick labels, legend entries,
texts and every series' points, so a test can check the drawing as data rather than pixels.

The rules: an axis that counts steps gets whole-number ticks (`step_axis`); series with
identical data are drawn once under a joint legend entry or offset and named identical
(`identical_groups`, `series_offsets`); points of different series that would land on one spot
are spread sideways by a small fixed amount (`point_offsets`); a bar of height 0 carries a label
(`label_zero_bars`); tick labels that would run together are thinned (`describe_axes`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display, ever: reports are rendered on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

Data = dict[str, Any]
# Sideways shift (in steps) between series or points that would otherwise coincide.
DODGE = 0.08
# Tick labels closer than this (pixels at the figure's drawing dpi) read as one run of digits.
MIN_GAP_PX = 6


def _save(fig: Any, path: Path, data: Data) -> Data:
    """Lay out `fig`, add what it drew to `data` (`axes`), write the PNG and the JSON sidecar."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    data["axes"] = describe_axes(fig)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    path.with_suffix(".json").write_text(json.dumps(data, indent=2, ensure_ascii=False))
    return data


# --------------------------------------------------------------------------- what was drawn


def _visible_ticks(axis: Any, lim: tuple[float, float]) -> tuple[list[float], list[str]]:
    lo, hi = sorted(lim)
    eps = 1e-9 * max(1.0, abs(hi - lo))
    ticks = [float(t) for t in axis.get_majorticklocs() if lo - eps <= t <= hi + eps]
    labels = [str(s) for s in axis.get_major_formatter().format_ticks(ticks)] if ticks else []
    return ticks, labels


def _run_together(labels: list[Any], renderer: Any) -> bool:
    """Whether neighbouring labels run together: closer than `MIN_GAP_PX` (or overlapping)."""
    boxes = sorted(
        (t.get_window_extent(renderer) for t in labels if t.get_visible() and t.get_text()),
        key=lambda b: b.x0,
    )
    return any(b.x0 - a.x1 < MIN_GAP_PX for a, b in zip(boxes, boxes[1:], strict=False))


def _declutter(ax: Any, renderer: Any) -> None:
    """Fewer x ticks until their labels stand apart; rotate as a last resort."""
    locator = ax.xaxis.get_major_locator()
    for nbins in (7, 5, 4, 3, 2):
        if not _run_together(ax.xaxis.get_majorticklabels(), renderer):
            return
        if not isinstance(locator, MaxNLocator):
            break
        locator.set_params(nbins=nbins)
        ax.figure.canvas.draw()
    if _run_together(ax.xaxis.get_majorticklabels(), renderer):
        for t in ax.xaxis.get_majorticklabels():
            t.set_rotation(30)
            t.set_horizontalalignment("right")
        ax.figure.canvas.draw()


def _marks(ax: Any) -> list[Data]:
    """Every series of points on `ax`: its name (gid, else label), marker and points (data and
    pixel coordinates). Errorbar and bar containers count once; bars are their tops."""
    from matplotlib.collections import PathCollection
    from matplotlib.container import BarContainer, ErrorbarContainer

    out: list[Data] = []
    seen: set[int] = set()

    def add(name: Any, marker: str, xy: Any, kind: str) -> None:
        pts = [(float(x), float(y)) for x, y in xy if x == x and y == y]
        px = ax.transData.transform(pts).tolist() if pts else []
        out.append(
            {
                "name": str(name),
                "kind": kind,
                "marker": marker,
                "x": [p[0] for p in pts],
                "y": [p[1] for p in pts],
                "px": [[round(a, 1), round(b, 1)] for a, b in px],
            }
        )

    for c in ax.containers:
        for child in c.get_children():
            seen.add(id(child))
        if isinstance(c, ErrorbarContainer) and c.lines[0] is not None:
            line = c.lines[0]
            add(line.get_gid() or c.get_label(), str(line.get_marker()), line.get_xydata(), "points")
        elif isinstance(c, BarContainer):
            tops = [(p.get_x() + p.get_width() / 2, p.get_height()) for p in c.patches]
            add(c.get_label(), "bar", tops, "bars")
    for line in ax.lines:
        if id(line) in seen or not len(line.get_xdata()):
            continue
        add(line.get_gid() or line.get_label(), str(line.get_marker()), line.get_xydata(), "line")
    for coll in ax.collections:
        if isinstance(coll, PathCollection) and id(coll) not in seen:
            add(coll.get_gid() or coll.get_label(), "scatter", coll.get_offsets(), "points")
    return out


def describe_axes(fig: Any) -> list[Data]:
    """What each panel of `fig` shows, read back from matplotlib after layout: title, axis labels,
    the ticks inside the view with their labels (after thinning any that ran together), legend
    entries, texts, and every series' points (`_marks`). Colorbars are panels too."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    out = []
    for ax in fig.axes:
        _declutter(ax, renderer)
        xticks, xlabels = _visible_ticks(ax.xaxis, ax.get_xlim())
        yticks, ylabels = _visible_ticks(ax.yaxis, ax.get_ylim())
        legend = ax.get_legend()
        out.append(
            {
                "title": ax.get_title(),
                "xlabel": ax.get_xlabel(),
                "ylabel": ax.get_ylabel(),
                "xlim": [float(v) for v in ax.get_xlim()],
                "ylim": [float(v) for v in ax.get_ylim()],
                "xticks": xticks,
                "xticklabels": xlabels,
                "yticks": yticks,
                "yticklabels": ylabels,
                "xticklabels_run_together": _run_together(ax.xaxis.get_majorticklabels(), renderer),
                "legend": [t.get_text() for t in legend.get_texts()] if legend else [],
                "legend_px": [round(v, 1) for v in legend.get_window_extent(renderer).extents]
                if legend
                else None,
                "texts": [
                    {"text": t.get_text(), "x": float(t.xy[0]), "y": float(t.xy[1])}
                    for t in ax.texts
                    if hasattr(t, "xy") and t.get_text()
                ],
                "notes": [t.get_text() for t in ax.texts if t.get_gid() == "note"],
                "marks": _marks(ax),
            }
        )
    return out


# --------------------------------------------------------------------------- shared drawing rules


def step_axis(ax: Any, steps: Iterable[float], axis: str = "x") -> None:
    """Whole-number ticks on an axis that counts steps, the view half a step beyond the data so
    a single step still gets its tick (and its own number, not 2.84 ... 3.16)."""
    values = [float(s) for s in steps if s == s]
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    if values:
        lim = (min(values) - 0.5, max(values) + 0.5)
        ax.set_xlim(*lim) if axis == "x" else ax.set_ylim(*lim)


def identical_groups(series: Mapping[str, tuple[Sequence[float], Sequence[float]]]) -> list[list[str]]:
    """Names grouped by exactly equal (x, y) data, in first-seen order (a group of one is a
    series that coincides with no other)."""
    groups: dict[str, list[str]] = {}
    for name, (xs, ys) in series.items():
        key = json.dumps([list(map(float, xs)), list(map(float, ys))])
        groups.setdefault(key, []).append(name)
    return list(groups.values())


def series_offsets(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]], width: float
) -> dict[str, float]:
    """A constant sideways offset per series that shares at least one point with another (0 for
    the rest), spread symmetrically within each set of series linked by shared points, so every
    series stays visible and the offsets do not depend on anything but the data and the order."""
    names = list(series)
    points = {n: {(float(x), float(y)) for x, y in zip(*series[n], strict=True) if y == y} for n in names}
    parent = {n: n for n in names}

    def root(n: str) -> str:
        while parent[n] != n:
            n = parent[n]
        return n

    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if points[a] & points[b]:
                parent[root(b)] = root(a)
    clusters: dict[str, list[str]] = defaultdict(list)
    for n in names:
        clusters[root(n)].append(n)
    out = {}
    for members in clusters.values():
        for k, n in enumerate(members):
            out[n] = (k - (len(members) - 1) / 2) * width if len(members) > 1 else 0.0
    return out


def point_offsets(points: list[tuple[float, float]], tol: tuple[float, float], width: float) -> list[float]:
    """A sideways offset per point so that points closer than `tol` (x, y) to each other are
    spread `width` apart around where they were (0 for points alone); deterministic."""
    out = [0.0] * len(points)
    order = sorted(range(len(points)), key=lambda i: (points[i][1], points[i][0], i))
    clusters: list[list[int]] = []
    for i in order:
        x, y = points[i]
        for c in clusters:
            if any(abs(points[j][0] - x) <= tol[0] and abs(points[j][1] - y) <= tol[1] for j in c):
                c.append(i)
                break
        else:
            clusters.append([i])
    for c in clusters:
        for k, i in enumerate(sorted(c)):
            out[i] = (k - (len(c) - 1) / 2) * width if len(c) > 1 else 0.0
    return out


def note(ax: Any, text: str) -> None:
    """A small gray note under the panel (e.g. which series are drawn as one)."""
    ax.annotate(
        text,
        xy=(0, 0),
        xycoords="axes fraction",
        xytext=(0, -34),
        textcoords="offset points",
        fontsize=7,
        color="dimgray",
        va="top",
        gid="note",
        annotation_clip=False,
    )


def label_zero_bars(ax: Any, container: Any, fmt: str = "0") -> None:
    """A bar of height 0 is invisible: write `fmt` where its top would be."""
    labels = [fmt if p.get_height() == 0 else "" for p in container.patches]
    if any(labels):
        color = container.patches[0].get_facecolor()
        ax.bar_label(container, labels=labels, fontsize=8, padding=6, color=color, fontweight="bold")
