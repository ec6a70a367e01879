"""Figures (PNG via matplotlib's Agg backend). Each function draws one figure from plain
arrays and returns the path written; nothing here knows how the numbers were produced."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot() -> Any:
    from s3t.extras import require

    matplotlib = require("matplotlib", "experiments", "drawing plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_simulation(
    path: str | Path,
    budgets: Sequence[int],
    delta_mean: Sequence[float],
    delta_ci95: Sequence[float],
    delta_theory: Sequence[float | None],
    depth_curves: Mapping[int, np.ndarray],
    sisa_delta: float,
    title: str,
) -> Path:
    """Two panels: δ against budget (simulated ± 95% CI, closed form, SISA), and mean served
    depth per shard against the number of deletions, one line per budget."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.errorbar(budgets, delta_mean, yerr=delta_ci95, fmt="o-", capsize=3, label="simulated")
    theory = [(b, t) for b, t in zip(budgets, delta_theory, strict=True) if t is not None]
    if theory:
        left.plot(*zip(*theory, strict=True), "k--", label="theory m·L·H(m·min(B,L))")
    left.axhline(sisa_delta, color="grey", ls=":", label="SISA (B = 1)")
    left.set(xlabel="budget B (sequences per shard)", ylabel="deletions before failure δ")
    left.set_xticks(list(budgets))
    left.legend()
    for budget, curve in depth_curves.items():
        right.plot(np.arange(len(curve)), curve, label=f"B = {budget}")
    right.set(xlabel="deletion requests served", ylabel="mean served depth per shard")
    right.legend()
    fig.suptitle(title)
    return _save(fig, path)


def plot_lines(
    path: str | Path,
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    xlabel: str,
    ylabel: str,
    title: str,
    markers: bool = True,
    logy: bool = False,
) -> Path:
    """One panel of labelled (x, y) lines."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, "o-" if markers else "-", label=label, markersize=4)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if all(float(x).is_integer() for xs, _ in series.values() for x in xs):
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # budgets, shards: no 1.25
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_bars(
    path: str | Path,
    labels: Sequence[str],
    values: Sequence[float],
    ylabel: str,
    title: str,
    logy: bool = False,
) -> Path:
    """One panel of labelled bars, each annotated with its value."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.5, 1.1 * len(labels) + 2), 4.2))
    bars = ax.bar(range(len(labels)), values, color="tab:blue")
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
    ax.bar_label(bars, fmt="%.3g")
    ax.set(ylabel=ylabel)
    ax.set_title(textwrap.fill(title, width=int(fig.get_figwidth() * 9)), fontsize=10)
    if logy:
        ax.set_yscale("log")
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:  # type: ignore[no-untyped-def]
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    _pyplot().close(fig)
    return out


def plot_deletion_curves(
    path: str | Path,
    curve: Sequence[Mapping[str, Any]],
    reference: float | None,
    title: str,
) -> Path:
    """Two panels from a deletion replay (rows with ``deletions`` and per-budget
    ``accuracy``/``live_shards``): test accuracy of each budget while it still serves, and
    its live shards, so a budget whose service failed is visible where its accuracy ends."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    budgets = sorted(curve[0]["budgets"])
    xs = [row["deletions"] for row in curve]
    # wide solid lines under narrower dashed and dotted ones: budgets that coincide stay visible
    styles = [("-", "o", 4.0, 8), ("--", "s", 2.5, 6), (":", "^", 2.0, 4)]
    for i, b in enumerate(budgets):
        ls, marker, width, size = styles[min(i, len(styles) - 1)]
        label = f"B = {b}" + (" (SISA)" if str(b) == "1" else "")
        points = [(x, row["budgets"][b]["accuracy"]) for x, row in zip(xs, curve, strict=True)]
        alive = [(x, y) for x, y in points if y is not None]
        if alive:
            left.plot(
                *zip(*alive, strict=True), ls=ls, marker=marker, lw=width, ms=size, label=label
            )
        right.step(
            xs,
            [row["budgets"][b]["live_shards"] for row in curve],
            where="post",
            ls=ls,
            lw=width,
            label=label,
        )
    if reference is not None:
        left.axhline(reference, color="grey", ls=":", label="ordinary LoRA (no unlearning)")
    left.set(xlabel="deletion requests served", ylabel="test accuracy (while serving)")
    right.set(xlabel="deletion requests served", ylabel="live shards")
    right.yaxis.get_major_locator().set_params(integer=True)
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    return _save(fig, path)


def plot_subjects(
    path: str | Path,
    curves: Mapping[str, tuple[Sequence[float], Sequence[float | None]]],
    deltas: Mapping[str, tuple[float, float, float, float]],
    title: str,
) -> Path:
    """Two panels: accuracy vs subject requests per partitioning (a cross where the service
    failed: no shard left), and δ in subject requests measured (with its 95% CI) next to
    simulated (with its 95% CI) per partitioning."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, (xs, ys) in curves.items():
        (line,) = left.plot(
            xs, [float("nan") if y is None else y for y in ys], "o-", label=label, markersize=4
        )
        # where the service failed (no shard left): a cross at the last accuracy it had
        failed = [i for i, y in enumerate(ys) if y is None and i > 0 and ys[i - 1] is not None]
        for i in failed:
            left.plot(xs[i], ys[i - 1], "x", color=line.get_color(), markersize=10, mew=2)
            left.annotate(
                "service failed",
                (xs[i], ys[i - 1]),
                textcoords="offset points",
                xytext=(6, 4),
                fontsize=8,
                color=line.get_color(),
            )
    left.set(
        xlabel="subject deletion requests",
        ylabel="test accuracy",
        title="Accuracy while people leave",
    )
    left.grid(alpha=0.3)
    left.legend()
    names = list(deltas)
    x = np.arange(len(names))
    measured = [deltas[n][0] for n in names]
    simulated = [deltas[n][2] for n in names]
    right.bar(
        x - 0.2, measured, 0.4, yerr=[deltas[n][1] for n in names], label="measured", capsize=4
    )
    right.bar(
        x + 0.2, simulated, 0.4, yerr=[deltas[n][3] for n in names], label="simulated", capsize=4
    )
    right.set_xticks(x, names)
    right.set(
        ylabel="subject requests until every shard is dead", title="Deletion rate δ, in people"
    )
    right.legend()
    fig.suptitle(textwrap.fill(title, 110), fontsize=10)
    return _save(fig, path)
