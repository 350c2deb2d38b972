"""The report's plots drawn from store cells; every function returns a matplotlib Figure.

Figures are built with matplotlib's object API (Figure + the Agg canvas), not
pyplot: nothing is registered globally, so nothing needs closing and no
display backend is ever touched. save_figure writes the PNG and a PDF
without a creation date (the same bytes on every run).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from robust_csc.atomic import atomic_write
from robust_csc.evaluation.metrics import SEVERITIES
from robust_csc.reports.cells import (
    CLEAN,
    WORST_CASE,
    attack_norm,
    attack_order,
    chosen_lambda,
    corruption_order,
    format_epsilon,
    known_setting,
    labels,
    series_of,
)

PNG_DPI = 100
_NAN = float("nan")


def wrap(title: str, width: int) -> str:
    """A long figure title over several lines (titles name the whole series)."""
    import textwrap

    return "\n".join(textwrap.wrap(title, width)) or title


def new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)  # the Agg canvas: savefig works without pyplot
    return figure


def save_figure(figure: Figure, folder: Path, name: str) -> dict[str, Path]:
    """folder/name.png and folder/name.pdf, each written whole or not at all; {format: path}."""
    out = {"png": folder / f"{name}.png", "pdf": folder / f"{name}.pdf"}
    atomic_write(out["png"], lambda f: figure.savefig(f, format="png", dpi=PNG_DPI, metadata={"Software": None}))
    # The layout is solved once, for the PNG; the PDF reuses it (constrained layout costs as much as a draw).
    figure.set_layout_engine("none")
    atomic_write(
        out["pdf"], lambda f: figure.savefig(f, format="pdf", metadata={"CreationDate": None, "Creator": None, "Producer": None})
    )
    return out


def _grid(figure: Figure, n: int, ncols: int = 5, share: bool = False):
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    # Shared axes print their tick labels once per row / column: fewer texts to lay out, a faster draw.
    axes = figure.subplots(nrows, ncols, squeeze=False, sharex=share, sharey=share)
    for extra in axes.flat[n:]:
        extra.set_visible(False)
    return list(axes.flat[:n])


def _panel_title(corruption: str) -> str:
    return "clean" if corruption == CLEAN else corruption.replace("_", " ")


def _severity_colors(severities) -> dict[int, tuple]:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    ordered = sorted(severities)
    span = max(len(ordered) - 1, 1)
    return {s: cmap(0.9 * i / span) for i, s in enumerate(ordered)}


# ---------------------------------------------------------------- corruptions


def accuracy_vs_severity(rows: pd.DataFrame, title: str) -> Figure:
    """A panel per corruption: accuracy against severity (0 = clean), one line per series in rows."""
    series = series_of(rows)
    names = labels(series)
    corruptions = [c for c in corruption_order(rows["corruption"]) if c != CLEAN]
    ncols = min(5, max(1, len(corruptions)))
    figure = new_figure(2.6 * ncols, 2.2 * math.ceil(len(corruptions) / ncols) + 0.9)
    figure.suptitle(wrap(title, int(figure.get_figwidth() * 11)), fontsize=10)
    handles = {}
    for ax, corruption in zip(_grid(figure, len(corruptions), share=True), corruptions):
        for i, s in enumerate(series):
            mine = s.rows(rows)
            cells = mine[mine["corruption"] == corruption]
            if cells.empty:
                continue
            points = dict(zip(cells["severity"].astype(int), cells["accuracy"]))
            clean = mine[mine["corruption"] == CLEAN]["accuracy"]
            if len(clean):
                points[0] = float(clean.iloc[0])
            xs = sorted(points)
            (line,) = ax.plot(xs, [points[x] for x in xs], marker="o", markersize=3, color=f"C{i % 10}")
            handles[names[s]] = line
        ax.set_title(_panel_title(corruption), fontsize=9)
        ax.set_xticks([0, *SEVERITIES], ["clean", *map(str, SEVERITIES)], fontsize=7)
        ax.set_yticks([0.0, 0.25, 0.5, 0.75, 1.0])
        ax.set_ylim(-0.02, 1.02)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.label_outer()
    if handles:
        figure.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=min(3, len(handles)),
                      fontsize=8, frameon=False)
    return figure


def heatmap(table: pd.DataFrame, title: str) -> Figure:
    """Corruption x severity accuracies of one series (a severity_table; its mean row and column are left out)."""
    cells = table.drop(index="mean", errors="ignore")[[str(s) for s in SEVERITIES]]
    values = cells.to_numpy(dtype=float)
    figure = new_figure(4.6, 0.9 + 0.28 * len(cells))
    ax = figure.subplots()
    image = ax.imshow(values, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(SEVERITIES)), [f"severity {s}" for s in SEVERITIES], fontsize=7)
    ax.set_yticks(range(len(cells)), [_panel_title(c) for c in cells.index], fontsize=7)
    for (i, j), value in np.ndenumerate(values):
        if not math.isnan(value):
            ax.text(j, i, f"{100 * value:.1f}", ha="center", va="center", fontsize=6,
                    color="black" if value > 0.6 else "white")
    figure.colorbar(image, ax=ax, label="accuracy", shrink=0.9)
    ax.set_title(wrap(title, 60), fontsize=8)
    return figure


# ---------------------------------------------------------------- attacks


def robust_vs_epsilon(rows: pd.DataFrame, title: str) -> Figure:
    """Robust accuracy against epsilon: one line per (series, attack); the worst case drawn thicker."""
    series = series_of(rows)
    names = labels(series)
    figure = new_figure(6.0, 3.6)
    ax = figure.subplots()
    norms = set()
    for i, s in enumerate(series):
        mine = s.rows(rows)
        for attack in sorted(set(mine["attack"]), key=attack_order):
            cells = mine[mine["attack"] == attack].sort_values("epsilon")
            name, norm = attack_norm(attack)
            norms.add(norm)
            worst = name == WORST_CASE
            ax.plot(cells["epsilon"], cells["accuracy"], marker="o", markersize=3, color=f"C{i % 10}",
                    linewidth=2.4 if worst else 1.0, linestyle="-" if worst else "--", label=f"{names[s]}: {name}")
    epsilons = sorted(set(rows["epsilon"]))
    norm = next(iter(norms)) if len(norms) == 1 else ""
    ax.set_xticks(epsilons, [format_epsilon(e, norm) for e in epsilons], fontsize=7, rotation=45 if len(epsilons) > 6 else 0)
    ax.set_xlabel(f"epsilon ({norm})" if norm else "epsilon")
    ax.set_ylabel("robust accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False)
    ax.set_title(wrap(title, 70), fontsize=9)
    return figure


# ---------------------------------------------------------------- lambda tuning


def grid_lambda(name: str) -> float | None:
    """The grid value of a tuning cell's lambda setting ("stem=0.3" -> 0.3); None for "trained" or unknown."""
    setting = known_setting(name)
    return None if setting is None else setting.value


def grid_points(rows: pd.DataFrame, column: str) -> dict[tuple[str, int], list[tuple[float, float]]]:
    """{(corruption, severity): [(lambda, value), ...] sorted by lambda} of grid cells."""
    out: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for corruption, severity, name, value in zip(rows["corruption"], rows["severity"], rows["lambda_setting"], rows[column]):
        lam = grid_lambda(name)
        if lam is None or value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        out.setdefault((corruption, int(severity)), []).append((lam, float(value)))
    return {key: sorted(points) for key, points in out.items()}


def best_on_grid(points: list[tuple[float, float]]) -> float:
    """The lambda of the highest accuracy; the smallest such lambda on ties."""
    best = max(value for _, value in points)
    return min(lam for lam, value in points if value == best)


def accuracy_vs_lambda(rows: pd.DataFrame, chosen: dict[tuple[str, int], float], title: str) -> Figure:
    """A panel per corruption: accuracy against the grid lambda, one line per severity; the chosen lambda marked.

    chosen: {(corruption, severity): lambda} (a policy's choices, or the best grid point).
    """
    points = grid_points(rows, "accuracy")
    corruptions = corruption_order({c for c, _ in points})
    ncols = min(4, max(1, len(corruptions)))
    figure = new_figure(3.0 * ncols, 2.5 * math.ceil(len(corruptions) / ncols) + 0.5)
    figure.suptitle(wrap(title, int(figure.get_figwidth() * 11)), fontsize=10)
    colors = _severity_colors({s for _, s in points})
    for ax, corruption in zip(_grid(figure, len(corruptions), ncols), corruptions):
        marks = []
        for severity in sorted(s for c, s in points if c == corruption):
            curve = points[(corruption, severity)]
            ax.plot([p[0] for p in curve], [p[1] for p in curve], color=colors[severity], linewidth=1.2,
                    label="clean" if corruption == CLEAN else f"severity {severity}")
            lam = chosen.get((corruption, severity))
            if lam is not None:
                at = dict(curve)
                marks.append((lam, at.get(lam, np.interp(lam, [p[0] for p in curve], [p[1] for p in curve])),
                              colors[severity]))
        if marks:
            ax.scatter([m[0] for m in marks], [m[1] for m in marks], c=[m[2] for m in marks], marker="*", s=80,
                       edgecolors="black", linewidths=0.5, zorder=3)
        ax.set_title(_panel_title(corruption), fontsize=9)
        ax.set_xlabel("lambda", fontsize=8)
        ax.set_ylabel("accuracy", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, frameon=False)
    return figure


def chosen_lambda_vs_noise(rows: pd.DataFrame, title: str) -> Figure:
    """One policy's chosen lambda against severity (0 = clean): one line per corruption."""
    figure = new_figure(5.0, 3.4)
    ax = figure.subplots()
    corruptions = [c for c in corruption_order(rows["corruption"]) if c != CLEAN]
    clean = rows[rows["corruption"] == CLEAN]
    clean_lambda = chosen_lambda(clean["extras"].iloc[0]) if len(clean) else _NAN
    for i, corruption in enumerate(corruptions):
        cells = rows[rows["corruption"] == corruption].sort_values("severity")
        xs = list(cells["severity"].astype(int))
        ys = [chosen_lambda(e) for e in cells["extras"]]
        if not math.isnan(clean_lambda):
            xs, ys = [0, *xs], [clean_lambda, *ys]
        ax.plot(xs, ys, marker="o", markersize=3, color=f"C{i % 10}", label=_panel_title(corruption))
    ax.set_xticks([0, *SEVERITIES], ["clean", *map(str, SEVERITIES)])
    ax.set_xlabel("severity")
    ax.set_ylabel("chosen lambda")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False)
    ax.set_title(wrap(title, 55), fontsize=8)
    return figure


def accuracy_vs_noise_level(frame: pd.DataFrame, title: str) -> Figure:
    """A noise_curve frame: accuracy against the noise level, one line per lambda setting."""
    figure = new_figure(5.0, 3.4)
    ax = figure.subplots()
    for i, setting in enumerate(dict.fromkeys(frame["lambda_setting"])):
        rows = frame[frame["lambda_setting"] == setting].sort_values("level")
        ax.plot(rows["level"], rows["accuracy"], marker="o", markersize=3, color=f"C{i % 10}", label=f"lambda {setting}")
        if {"low", "high"} <= set(rows.columns):  # the 95% Wilson band of every point
            ax.fill_between(rows["level"], rows["low"], rows["high"], color=f"C{i % 10}", alpha=0.15, linewidth=0)
    kinds = sorted(set(frame["kind"]))
    ax.set_xlabel(f"{' / '.join(kinds)} noise level")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False)
    ax.set_title(wrap(title, 55), fontsize=8)
    return figure


def sparsity_recon_vs_lambda(rows: pd.DataFrame, title: str) -> Figure:
    """Top row: the stem's code density against lambda; bottom row: its reconstruction error. Lines per severity."""
    density = grid_points(rows, "mean_code_density")
    recon = grid_points(rows, "mean_recon_error")
    corruptions = corruption_order({c for c, _ in density} | {c for c, _ in recon})
    ncols = max(1, len(corruptions))
    figure = new_figure(2.7 * ncols, 4.8)
    figure.suptitle(wrap(title, int(figure.get_figwidth() * 11)), fontsize=10)
    axes = figure.subplots(2, ncols, squeeze=False)
    colors = _severity_colors({s for _, s in density} | {s for _, s in recon})
    for j, corruption in enumerate(corruptions):
        for row, (points, what) in enumerate(((density, "code density"), (recon, "recon error"))):
            ax = axes[row][j]
            for severity in sorted(s for c, s in points if c == corruption):
                curve = points[(corruption, severity)]
                ax.plot([p[0] for p in curve], [p[1] for p in curve], color=colors[severity], linewidth=1.2,
                        label="clean" if corruption == CLEAN else f"severity {severity}")
            if row == 0:
                ax.set_title(_panel_title(corruption), fontsize=9)
            ax.set_xlabel("lambda", fontsize=8)
            ax.set_ylabel(what, fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        axes[0][j].legend(fontsize=6, frameon=False)
    return figure
