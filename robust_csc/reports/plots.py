"""The report's plots drawn from store cells; every function returns a matplotlib Figure.

Accuracies are drawn in percent (the tables' scale), every axis says its unit, and lines that may overlap get
their own marker, line style and a small sideways offset so that each stays visible.

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
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", "-.", ":")
ACCURACY = "accuracy (%)"


def style(i: int) -> dict:
    """The i-th line's colour, marker and line style: no two of a figure's first eight lines look alike."""
    return {"color": f"C{i % 10}", "marker": MARKERS[i % len(MARKERS)], "linestyle": LINESTYLES[i % len(LINESTYLES)]}


def offsets(count: int, width: float) -> list[float]:
    """Sideways offsets of count lines on one x grid, centred on 0, width apart in all."""
    if count < 2:
        return [0.0] * count
    return [width * (i / (count - 1) - 0.5) for i in range(count)]


def percent(values) -> np.ndarray:
    return 100.0 * np.asarray(values, dtype=float)


def percent_axis(ax, label: str = ACCURACY) -> None:
    ax.set_ylim(-2, 102)
    ax.set_yticks([0, 25, 50, 75, 100])
    ax.set_ylabel(label, fontsize=8)


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
    """A panel per corruption: accuracy (%) against severity (0 = clean), one line per series in rows."""
    series = series_of(rows)
    names = labels(series)
    corruptions = [c for c in corruption_order(rows["corruption"]) if c != CLEAN]
    ncols = min(5, max(1, len(corruptions)))
    figure = new_figure(2.6 * ncols, 2.2 * math.ceil(len(corruptions) / ncols) + 0.9)
    figure.suptitle(wrap(title, int(figure.get_figwidth() * 11)), fontsize=10)
    handles = {}
    shifts = offsets(len(series), 0.3)
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
            (line,) = ax.plot([x + shifts[i] for x in xs], percent([points[x] for x in xs]), markersize=3,
                              linewidth=1.0, **style(i))
            handles[names[s]] = line
        ax.set_title(_panel_title(corruption), fontsize=9)
        ax.set_xticks([0, *SEVERITIES], ["clean", *map(str, SEVERITIES)], fontsize=7)
        percent_axis(ax)
        ax.set_xlabel("severity", fontsize=8)
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
    image = ax.imshow(percent(values), vmin=0.0, vmax=100.0, cmap="viridis", aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(SEVERITIES)), [f"severity {s}" for s in SEVERITIES], fontsize=7)
    ax.set_yticks(range(len(cells)), [_panel_title(c) for c in cells.index], fontsize=7)
    for (i, j), value in np.ndenumerate(values):
        if not math.isnan(value):
            ax.text(j, i, f"{100 * value:.1f}", ha="center", va="center", fontsize=6,
                    color="black" if value > 0.6 else "white")
    figure.colorbar(image, ax=ax, label=ACCURACY, shrink=0.9)
    ax.set_title(wrap(title, 60), fontsize=8)
    return figure


# ---------------------------------------------------------------- attacks


def robust_vs_epsilon(rows: pd.DataFrame, title: str) -> Figure:
    """Robust accuracy (%) against epsilon: one line per (series, attack), starting at the clean accuracy of the
    attacked points (epsilon 0); the worst case drawn thicker; markers, styles and offsets keep lines apart."""
    from robust_csc.reports.names import attack_label

    series = series_of(rows)
    names = labels(series)
    figure = new_figure(6.4, 3.8)
    ax = figure.subplots()
    norms = set()
    epsilons = sorted(set(rows["epsilon"]))
    step = min(np.diff([0.0, *epsilons])) if epsilons else 1.0
    # A sanity check's cell (name~check) attacks only the points every other attack left robust: its accuracy is
    # no robust accuracy of the points, and it shows through the worst case it lowers.
    lines = [(s, attack) for s in series for attack in sorted(set(s.rows(rows)["attack"]), key=attack_order)
             if not attack_norm(attack)[0].endswith("~check")]
    shifts = offsets(len(lines), 0.25 * step)
    for i, (s, attack) in enumerate(lines):
        mine = s.rows(rows)
        cells = mine[mine["attack"] == attack].sort_values("epsilon")
        name, norm = attack_norm(attack)
        norms.add(norm)
        worst = name == WORST_CASE
        xs, ys = list(cells["epsilon"]), list(cells["accuracy"])
        clean = [e.get("clean_correct") for e in cells["extras"] if isinstance(e.get("clean_correct"), int)]
        single = len(xs) == 1  # one budget (AutoAttack at 8/255): a marker, not a line drawn across the axis
        if clean and not single:  # epsilon 0: the attacked points' clean accuracy
            xs, ys = [0.0, *xs], [clean[0] / int(cells["n"].iloc[0]), *ys]
        series_index = series.index(s)
        look = style(i)
        look.update(color=f"C{series_index % 10}", linestyle="none" if single else "-" if worst else look["linestyle"])
        if single:
            look["markersize"] = 6
        look.setdefault("markersize", 4 if worst else 3)
        ax.plot([x + shifts[i] for x in xs], percent(ys), linewidth=2.4 if worst else 1.0,
                label=f"{names[s]}: {attack_label(name)}", **look)
    norm = next(iter(norms)) if len(norms) == 1 else ""
    ticks = [0.0, *epsilons]
    ax.set_xticks(ticks, ["0 (clean)", *[format_epsilon(e, norm) for e in epsilons]], fontsize=7,
                  rotation=45 if len(ticks) > 6 else 0)
    ax.set_xlabel(f"epsilon ({norm} radius, pixel values in [0, 1])" if norm else "epsilon (pixel values in [0, 1])",
                  fontsize=8)
    percent_axis(ax, "robust accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6.5, frameon=False, loc="upper right")
    ax.set_title(wrap(title, 75), fontsize=9)
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


def lambda_axis_label(rows: pd.DataFrame) -> str:
    """"stem λ", "λ (every layer)" or "λ scale (× trained)": what the grid values of rows set."""
    kinds = {s.kind for s in (known_setting(n) for n in rows["lambda_setting"]) if s is not None}
    kind = next(iter(kinds)) if len(kinds) == 1 else ""
    return {"stem": "stem λ", "all": "λ (every CSC layer)", "scale": "λ scale (× trained λ)"}.get(kind, "λ")


def accuracy_vs_lambda(rows: pd.DataFrame, chosen: dict[tuple[str, int], float], title: str) -> Figure:
    """A panel per corruption: accuracy (%) against the grid lambda, one line per severity; the chosen lambda marked.

    chosen: {(corruption, severity): lambda} (a policy's choices, or the best grid point).
    """
    lambda_axis = lambda_axis_label(rows)
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
            ax.plot([p[0] for p in curve], percent([p[1] for p in curve]), color=colors[severity], linewidth=1.2,
                    label="clean" if corruption == CLEAN else f"severity {severity}")
            lam = chosen.get((corruption, severity))
            if lam is not None:
                at = dict(curve)
                marks.append((lam, 100 * at.get(lam, np.interp(lam, [p[0] for p in curve], [p[1] for p in curve])),
                              colors[severity]))
        if marks:
            ax.scatter([m[0] for m in marks], [m[1] for m in marks], c=[m[2] for m in marks], marker="*", s=80,
                       edgecolors="black", linewidths=0.5, zorder=3)
        ax.set_title(_panel_title(corruption), fontsize=9)
        ax.set_xlabel(lambda_axis, fontsize=8)
        percent_axis(ax)
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
        ax.plot(xs, ys, markersize=3, label=_panel_title(corruption), **style(i))
    ax.set_xticks([0, *SEVERITIES], ["clean", *map(str, SEVERITIES)])
    ax.set_xlabel("severity (0 = clean)", fontsize=8)
    layers = {e.get("layers") for e in rows["extras"]} if "extras" in rows else set()
    recon = any(e.get("rule") == "recon" for e in rows["extras"]) if "extras" in rows else False
    where = {"stem": "stem λ", "all": "λ (every CSC layer)", "scale": "λ scale (× trained λ)"}.get(
        next(iter(layers)) if len(layers) == 1 else "", "λ")
    ax.set_ylabel(f"chosen {where}" + (" (mean over images)" if recon else ""), fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False)
    ax.set_title(wrap(title, 55), fontsize=8)
    return figure


LEVEL_UNITS = {"gaussian": "gaussian σ", "speckle": "speckle σ", "shot": "shot noise: photons per unit intensity",
               "impulse": "impulse noise: fraction of pixels flipped"}


def accuracy_vs_noise_level(frame: pd.DataFrame, title: str) -> Figure:
    """A noise_curve frame: accuracy (%) against the noise level, one line per lambda setting, each with its
    95% Wilson band; settings by their readable names."""
    from robust_csc.reports.names import setting_label

    figure = new_figure(5.4, 3.6)
    ax = figure.subplots()
    settings = list(dict.fromkeys(frame["lambda_setting"]))
    levels = sorted(set(frame["level"]))
    step = min(np.diff(levels)) if len(levels) > 1 else 1.0
    shifts = offsets(len(settings), 0.15 * step)
    for i, setting in enumerate(settings):
        rows = frame[frame["lambda_setting"] == setting].sort_values("level")
        xs = rows["level"] + shifts[i]
        ax.plot(xs, percent(rows["accuracy"]), markersize=3, linewidth=1.1, label=setting_label(setting), **style(i))
        if {"low", "high"} <= set(rows.columns):  # the 95% Wilson band of every point
            ax.fill_between(xs, percent(rows["low"]), percent(rows["high"]), color=f"C{i % 10}", alpha=0.15, linewidth=0)
    kinds = sorted(set(frame["kind"]))
    ax.set_xlabel(" / ".join(LEVEL_UNITS.get(k, f"{k} noise level") for k in kinds), fontsize=8)
    percent_axis(ax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False)
    ax.set_title(wrap(title, 60), fontsize=8)
    return figure


def tta_by_severity(frame: pd.DataFrame, title: str) -> Figure:
    """A panel per model: accuracy (%) against severity (0 = clean) per setting, each point with its 95% interval.

    frame: robust_csc.reports.tta.by_severity's frame (model, setting, clean, severity 1..5 and their bounds).
    """
    models = list(dict.fromkeys(frame["model"]))
    figure = new_figure(4.6 * len(models), 3.9)
    figure.suptitle(wrap(title, int(figure.get_figwidth() * 11)), fontsize=10)
    axes = figure.subplots(1, len(models), squeeze=False, sharey=True)[0]
    columns = ["clean", *[f"severity {s}" for s in SEVERITIES]]
    for ax, model in zip(axes, models):
        rows = frame[frame["model"] == model]
        shifts = offsets(len(rows), 0.36)
        for i, (_, row) in enumerate(rows.iterrows()):
            xs = [x + shifts[i] for x in range(len(columns))]
            ys = percent([row[c] for c in columns])
            low = percent([row[f"{c} low"] for c in columns])
            high = percent([row[f"{c} high"] for c in columns])
            look = style(i)
            ax.errorbar(xs, ys, yerr=[np.nan_to_num(ys - low), np.nan_to_num(high - ys)], markersize=3.5,
                        linewidth=1.0, elinewidth=0.7, capsize=1.5, label=row["setting"], **look)
        ax.set_title(model, fontsize=9)
        ax.set_xticks(range(len(columns)), ["clean", *map(str, SEVERITIES)], fontsize=7)
        ax.set_xlabel("severity (accuracy: mean over the corruptions)", fontsize=8)
        percent_axis(ax)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5, frameon=False, loc="lower left")
    return figure


def sparsity_recon_vs_lambda(rows: pd.DataFrame, title: str) -> Figure:
    """Top row: the stem's code density (% non-zero) against lambda; bottom row: its reconstruction error
    ‖x − Az‖² per image (in the normalised input's units). Lines per severity."""
    lambda_axis = lambda_axis_label(rows)
    density = grid_points(rows, "mean_code_density")
    recon = grid_points(rows, "mean_recon_error")
    corruptions = corruption_order({c for c, _ in density} | {c for c, _ in recon})
    ncols = max(1, len(corruptions))
    figure = new_figure(2.7 * ncols, 4.8)
    figure.suptitle(wrap(title, int(figure.get_figwidth() * 11)), fontsize=10)
    axes = figure.subplots(2, ncols, squeeze=False)
    colors = _severity_colors({s for _, s in density} | {s for _, s in recon})
    for j, corruption in enumerate(corruptions):
        for row, (points, what, scale) in enumerate(((density, "code density (% non-zero)", 100.0),
                                                      (recon, "recon error (‖x − Az‖² per image)", 1.0))):
            ax = axes[row][j]
            for severity in sorted(s for c, s in points if c == corruption):
                curve = points[(corruption, severity)]
                ax.plot([p[0] for p in curve], [scale * p[1] for p in curve], color=colors[severity], linewidth=1.2,
                        label="clean" if corruption == CLEAN else f"severity {severity}")
            if row == 0:
                ax.set_title(_panel_title(corruption), fontsize=9)
            ax.set_xlabel(lambda_axis, fontsize=8)
            ax.set_ylabel(what, fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        axes[0][j].legend(fontsize=6, frameon=False)
    return figure
