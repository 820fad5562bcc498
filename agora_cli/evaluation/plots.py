"""The paper's figures, drawn from run stores (matplotlib, Agg backend, PNG).

Every `fig_*` function computes its data from the store(s), draws one PNG, writes the same data
as JSON next to it (`<name>.json`), and returns it, so a reader (or a test) can check a figure's
values without reading pixels. Data is plain dicts of lists, plus the sidecar's `axes`: what was
drawn on each panel, read back from matplotlib. The drawing rules every figure follows (whole
steps on step axes, identical series named, coinciding points spread, zero bars labelled) live
in `agora_cli.evaluation.drawing`.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NotRequired, TypedDict

import matplotlib

matplotlib.use("Agg")  # no display, ever: reports are rendered on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from agora_cli import report_store  # noqa: E402
from agora_cli.datasets import calibration_name  # noqa: E402
from agora_cli.evaluation.drawing import (  # noqa: E402
    DODGE,
    Data,
    _save,
    identical_groups,
    label_zero_bars,
    note,
    point_offsets,
    series_offsets,
    step_axis,
)
from agora_cli.protocol.majority import MAJORITY  # noqa: E402
from agora_cli.stats import successes, wilson  # noqa: E402
from agora_cli.store import Store  # noqa: E402
from agora_cli.training import round_store  # noqa: E402


class AnchorCurve(TypedDict):
    """One run's group anchor score per anchored step, with the pooled counts behind it."""

    step: list[int]
    score: list[float]
    k: NotRequired[list[int]]  # anchor answers right at that step, over members
    n: NotRequired[list[int]]  # anchor answers graded at that step, over members


def intervals(scores: list[float], ns: list[int | None]) -> tuple[list[float], list[float]]:
    """95% Wilson bounds (lo, hi) of each rate `scores[i]` over `ns[i]` items; a rate without
    an n gets the whole [0, 1] (drawn as no evidence, not as certainty)."""
    bounds = [wilson(successes(s, n), n) if n else (0.0, 1.0) for s, n in zip(scores, ns, strict=True)]
    return [b[0] for b in bounds], [b[1] for b in bounds]


def _yerr(scores: list[float], lo: list[float], hi: list[float]) -> list[list[float]]:
    return [
        [max(0.0, s - a) for s, a in zip(scores, lo, strict=True)],
        [max(0.0, b - s) for s, b in zip(scores, hi, strict=True)],
    ]


def _empty(ax: Any, what: str) -> None:
    ax.set_xticks([])  # no data, no scale (and no fractional "steps" on an empty axis)
    ax.set_yticks([])
    ax.text(
        0.5, 0.5, f"no {what} in this run yet", ha="center", va="center", transform=ax.transAxes, color="gray"
    )


def _identical_note(groups: list[list[str]], what: str) -> str:
    return f"identical {what}: " + "; ".join(" = ".join(g) for g in groups if len(g) > 1)


# --------------------------------------------------------------------------- Figure 1


def _member_colors(members: list[str]) -> dict[str, Any]:
    """One color per member, the same in every panel (anchor line and eval stars); majority black."""
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    plain = [m for m in members if m != MAJORITY]
    colors: dict[str, Any] = {m: cycle[i % len(cycle)] for i, m in enumerate(plain)}
    colors[MAJORITY] = "black"
    return colors


def eval_panels(anchor_benches: Iterable[str], eval_benches: Iterable[str]) -> dict[str, str]:
    """{eval benchmark: the panel it is drawn on}: the anchor panel of its calibration split
    (`gsm8k` evaluations on the `gsm8k_dev` anchor axes) or of the same name, else its own."""
    anchors = set(anchor_benches)
    out = {}
    for b in eval_benches:
        out[b] = b if b in anchors else calibration_name(b) if calibration_name(b) in anchors else b
    return out


def fig_scores_vs_step(
    store: Store,
    path: Path,
    title: str = "",
    evals: Data | None = None,
    evals_without_step: list[str] | None = None,
) -> Data:
    """Figure 1: benchmark score against step, one color per member and `@majority`.

    Lines are the external anchor (the calibration subset, from the `anchors` table); stars are
    full `agora eval` results at the step each was taken, drawn on the anchor axes of the
    benchmark's calibration split. `evals` is {benchmark: {member: {"step": [...], "score":
    [...], ...}}} (see `report.eval_points`); a benchmark with evaluations but no anchors gets its
    own panel, on the same step range. Anchor lines that coincide are offset sideways and named
    identical in the legend; stars on the same spot are spread apart.

    Data: {"anchors": {benchmark: {member: {"step", "score"}}}, "evals": `evals` as given,
    "evals_without_step": names of evaluations not drawn because they recorded no step,
    "panels": [{"benchmark", "evals", "anchor_offsets", "identical", "star_offsets"}]}.
    """
    from matplotlib.lines import Line2D

    evals = evals or {}
    anchors: Data = {}
    for r in report_store.all_anchors(store):
        line = anchors.setdefault(r.benchmark, {}).setdefault(
            r.member, {"step": [], "score": [], "n": [], "lo": [], "hi": []}
        )
        line["step"].append(r.step)
        line["score"].append(r.score)
        line["n"].append(r.n)
        lo, hi = intervals([r.score], [r.n])
        line["lo"] += lo
        line["hi"] += hi
    for per in evals.values():  # each star's 95% interval, from the n it was scored on
        for pts in per.values():
            pts["lo"], pts["hi"] = intervals(pts["score"], pts.get("n") or [None] * len(pts["score"]))
    panel_of = eval_panels(anchors, evals)
    benches = list(anchors) + [b for b in evals if panel_of[b] == b and b not in anchors]
    members = [m for per in (*anchors.values(), *evals.values()) for m in per]
    colors = _member_colors(list(dict.fromkeys(members)))
    all_steps = [s for per in (*anchors.values(), *evals.values()) for p in per.values() for s in p["step"]]
    n = max(1, len(benches))
    fig, axes = plt.subplots(1, n, figsize=(8 * n, 4), squeeze=False)  # 2 in of it: the legend
    panels: list[Data] = []
    if not benches:
        _empty(axes[0][0], "anchor scores or evaluations with a step")
    for ax, bench in zip(axes[0], benches, strict=False):
        lines = anchors.get(bench, {})
        star_benches = [b for b in evals if panel_of[b] == bench]
        # Members before the majority, as in the legend, so a later entry names an earlier one.
        ordered = sorted(lines, key=lambda m: m == MAJORITY)
        series = {m: (lines[m]["step"], lines[m]["score"]) for m in ordered}
        offsets = series_offsets(series, DODGE)
        groups = identical_groups(series)
        same_as = {m: g[0] for g in groups for m in g[1:]}
        for member, line in lines.items():
            ax.errorbar(
                [s + offsets[member] for s in line["step"]],
                line["score"],
                yerr=_yerr(line["score"], line["lo"], line["hi"]),
                marker="o",
                linestyle="--" if member == MAJORITY else "-",
                color=colors[member],
                capsize=3,
                elinewidth=0.8,
                gid=f"anchor {member}",
            )
        # Stars on one spot (same step, nearly the same score) are spread sideways; the majority
        # is drawn first and larger so that it rings a member's star it sits next to.
        stars = [(b, m, pts) for b in star_benches for m, pts in evals[b].items()]
        stars.sort(key=lambda t: t[1] != MAJORITY)
        flat = [(s, v) for _, _, pts in stars for s, v in zip(pts["step"], pts["score"], strict=True)]
        shifts = point_offsets(flat, (0.25, 0.03), DODGE * 1.5)
        star_offsets: Data = {}
        k = 0
        for b, member, pts in stars:
            dx = shifts[k : k + len(pts["step"])]
            k += len(pts["step"])
            star_offsets.setdefault(b, {})[member] = dx
            ax.errorbar(
                [s + d for s, d in zip(pts["step"], dx, strict=True)],
                pts["score"],
                yerr=_yerr(pts["score"], pts["lo"], pts["hi"]),
                linestyle="none",
                marker="*",
                markersize=22 if member == MAJORITY else 16,
                markeredgecolor="black",
                markeredgewidth=0.6,
                color=colors[member],
                ecolor=colors[member],
                capsize=4,
                zorder=3,
                gid=f"eval {b} {member}",
            )
        step_axis(ax, all_steps)  # every panel on the run's step range, whole steps only
        star_members = [m for _, m, _ in stars]
        shown = sorted(dict.fromkeys([*lines, *star_members]), key=lambda m: m == MAJORITY)
        handles = [
            Line2D(
                [],
                [],
                color=colors[m],
                linestyle="--" if m == MAJORITY else "-",
                label=f"{m} (anchor identical to {same_as[m]})" if m in same_as else m,
            )
            for m in shown
        ]
        if lines:
            handles.append(Line2D([], [], color="gray", marker="o", label="anchor (calibration subset)"))
        if stars:
            handles.append(
                Line2D(
                    [],
                    [],
                    color="gray",
                    marker="*",
                    markersize=12,
                    linestyle="none",
                    markeredgecolor="black",
                    label="eval (full agora eval)",
                )
            )
        if lines and star_benches and star_benches != [bench]:
            what = f"{bench} (anchor) + {', '.join(star_benches)} (eval)"
        else:
            kinds = " + ".join(k for k, has in (("anchor", lines), ("eval", stars)) if has)
            what = f"{bench} ({kinds})"
        ax.set(
            xlabel="step",
            ylabel="pass@1 (bars: 95% Wilson CI)",
            title=f"{what} {title}".strip(),
            ylim=(-0.06, 1.06),  # room for a whole star at 0 or 1
        )
        # Beside the panel, not on it: with several members the best spot inside still covers points.
        ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        identical = [g for g in groups if len(g) > 1]
        if identical:
            note(ax, _identical_note(identical, "anchor lines (offset sideways to stay visible)"))
        panels.append(
            {
                "benchmark": bench,
                "evals": star_benches,
                "anchor_offsets": offsets,
                "identical": identical,
                "star_offsets": star_offsets,
            }
        )
    data = {
        "anchors": anchors,
        "evals": evals,
        "evals_without_step": evals_without_step or [],
        "panels": panels,
    }
    return _save(fig, path, data)


# --------------------------------------------------------------------------- Figure 3


def _trim(v: float, _pos: int | None = None) -> str:
    return f"{v:.4f}".rstrip("0").rstrip(".")


def fig_difficulty_length(
    store: Store, path: Path, title: str = "", token_caps: dict[str, int] | None = None
) -> Data:
    """Figure 3: difficulty d_t against consensus approval, and response length against the
    share of solutions judged correct.

    `token_caps` ({member: solve max_tokens}) marks where a completion was cut off: a member
    whose mean sits on its cap had every solution truncated.

    Data: {"difficulty": {"step", "d", "v_t", "v_lo", "v_hi", "offsets"}, "length": {member:
    {"step", "mean_tokens", "correct_rate", "n", "lo", "hi", "offsets"}}, "token_caps"}: per
    committed step, d_t against the consensus approval rate V_t (share of solutions that passed
    unanimous verification, not correctness); per member and step, mean completion tokens of its
    solutions against the share judged correct; lo/hi are 95% Wilson bounds (error bars);
    offsets are the sideways shifts that keep points on one spot apart.
    """
    from matplotlib.colors import Normalize
    from matplotlib.ticker import FuncFormatter

    points = report_store.difficulty_points(store)
    diff: Data = {
        "step": [step for step, _, _, _ in points],
        "d": [d for _, d, _, _ in points],
        "v_t": [v for _, _, v, _ in points],
    }
    # V_t = approved / n_solutions: its 95% Wilson interval (whole [0, 1] when n is unknown).
    diff["v_lo"], diff["v_hi"] = intervals(diff["v_t"], [n for _, _, _, n in points])
    length: Data = {}
    for member, step, tokens, rate, n in report_store.length_points(store):
        d = length.setdefault(
            member, {"step": [], "mean_tokens": [], "correct_rate": [], "n": [], "lo": [], "hi": []}
        )
        d["step"].append(step)
        d["mean_tokens"].append(tokens)
        d["correct_rate"].append(rate)
        d["n"].append(n)
        lo, hi = intervals([rate], [n])
        d["lo"] += lo
        d["hi"] += hi
    caps = {m: c for m, c in (token_caps or {}).items() if m in length or not length}
    data = {"difficulty": diff, "length": length, "token_caps": caps}
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    if diff["step"]:
        span = (max(diff["d"]) - min(diff["d"])) or 0.01
        diff["offsets"] = point_offsets(
            list(zip(diff["d"], diff["v_t"], strict=True)), (span / 80, 0.01), span / 40
        )
        xs = [d + o for d, o in zip(diff["d"], diff["offsets"], strict=True)]
        a1.errorbar(
            xs,
            diff["v_t"],
            yerr=_yerr(diff["v_t"], diff["v_lo"], diff["v_hi"]),
            linestyle="none",
            color="gray",
            elinewidth=0.8,
            capsize=2,
            zorder=1,
        )
        norm = Normalize(min(diff["step"]) - 0.5, max(diff["step"]) + 0.5)
        sc = a1.scatter(xs, diff["v_t"], c=diff["step"], cmap="viridis", norm=norm, zorder=2, gid="V_t")
        fig.colorbar(sc, ax=a1, label="step", ticks=MaxNLocator(integer=True, min_n_ticks=1))
        a1.xaxis.set_major_locator(MaxNLocator(nbins=5))
        a1.xaxis.set_major_formatter(FuncFormatter(_trim))
    else:
        _empty(a1, "committed steps")
    a1.set(
        xlabel="difficulty d_t (Eq. 1)",
        ylabel="consensus approval V_t\n(share unanimously verified)",
        title=f"Difficulty vs consensus approval {title}".strip(),
    )
    # Points of different members (or steps) on one spot are spread sideways, so none hides.
    flat = [(x, y) for d in length.values() for x, y in zip(d["mean_tokens"], d["correct_rate"], strict=True)]
    xs_all = [x for x, _ in flat] + list(caps.values())
    span = (max(xs_all) - min(xs_all)) if xs_all else 1.0
    shifts = point_offsets(flat, (span / 80, 0.02), max(span / 50, 0.5))
    k = 0
    for member, d in length.items():
        d["offsets"] = shifts[k : k + len(d["step"])]
        k += len(d["step"])
        a2.errorbar(
            [x + o for x, o in zip(d["mean_tokens"], d["offsets"], strict=True)],
            d["correct_rate"],
            yerr=_yerr(d["correct_rate"], d["lo"], d["hi"]),
            linestyle="none",
            marker="o",
            label=member,
            alpha=0.8,
            capsize=2,
            elinewidth=0.8,
        )
    by_cap: dict[int, list[str]] = defaultdict(list)
    for m, c in caps.items():
        by_cap[c].append(m)
    for cap, who in sorted(by_cap.items()):
        whose = "" if len(by_cap) == 1 else f", {', '.join(who)}"
        a2.axvline(
            cap,
            color="firebrick",
            linestyle="--",
            linewidth=1,
            label=f"cap {cap} tokens (solve max_tokens{whose})",
        )
    if length:
        a2.legend(fontsize=8)
    else:
        _empty(a2, "graded solutions")
    a2.set(
        xlabel="mean response length (completion tokens)",
        ylabel="share judged correct",
        title="Response length vs performance (member x step)",
        ylim=(-0.05, 1.05),
    )
    return _save(fig, path, data)


# --------------------------------------------------------------------------- Figure 4


def fig_yield(store: Store, path: Path, threshold: int | None = None, title: str = "") -> Data:
    """Figure 4: high-quality yield per step and time to fill the buffer.

    Time is step time: the sum of the committed steps' own durations (started to committed), so
    a run that was stopped and resumed is not charged for the time it stood still.

    Data: {"step", "buffered", "solutions", "yield_rate", "step_s", "elapsed_s", "cumulative",
    "threshold", "fill_times_s"}: buffer rows added per committed step (and their share of the
    step's solutions), each step's duration, the cumulative buffer size against cumulative step
    time, and the step time each successive `threshold` rows took to accumulate (one training
    round each).
    """
    times = report_store.step_times(store)
    buffered = report_store.buffered_per_step(store)
    solutions = report_store.answered_per_step(store)
    data: Data = {
        "step": [],
        "buffered": [],
        "solutions": [],
        "yield_rate": [],
        "step_s": [],
        "elapsed_s": [],
        "cumulative": [],
        "threshold": threshold,
        "fill_times_s": [],
    }
    total, elapsed, last_fill = 0, 0.0, 0.0
    for step, started_at, committed_at in times:
        b, n = int(buffered.get(step, 0)), int(solutions.get(step, 0))
        total += b
        took = max(0.0, committed_at - (started_at or committed_at))
        elapsed += took
        data["step"].append(step)
        data["buffered"].append(b)
        data["solutions"].append(n)
        data["yield_rate"].append(b / n if n else 0.0)
        data["step_s"].append(round(took, 3))
        data["elapsed_s"].append(round(elapsed, 3))
        data["cumulative"].append(total)
        while threshold and total >= threshold * (len(data["fill_times_s"]) + 1):
            data["fill_times_s"].append(round(elapsed - last_fill, 3))
            last_fill = elapsed
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    if data["step"]:
        bars = a1.bar(data["step"], data["buffered"], color="tab:green", label="rows entering B_hq")
        label_zero_bars(a1, bars)
        step_axis(a1, data["step"])
        a1b = a1.twinx()
        a1b.plot(data["step"], data["yield_rate"], color="black", marker=".", label="share kept")
        a1b.set_ylabel("share of solutions kept (line)")
        # The share's 0 sits above the bars' baseline, so a "0" bar label is not under the line.
        a1b.set_ylim(-0.3, 1.02)
        a1b.set_yticks([0, 0.25, 0.5, 0.75, 1])
        a2.plot(data["elapsed_s"], data["cumulative"], marker=".", label="cumulative |B_hq|")
        if threshold:
            for k in range(1, max(1, total // threshold) + 1):
                a2.axhline(threshold * k, color="gray", linestyle=":")
                a2.annotate(
                    f"{threshold * k} rows (round {k})",
                    xy=(0, threshold * k),
                    xycoords=("axes fraction", "data"),
                    xytext=(3, 2),
                    textcoords="offset points",
                    fontsize=7,
                    color="dimgray",
                )
    else:
        _empty(a1, "committed steps")
    a1.set(
        xlabel="step",
        ylabel="rows entering B_hq (Eq. 4, bars)",
        title=f"High-quality yield per step {title}".strip(),
    )
    fills = ", ".join(f"{t:.0f}s" for t in data["fill_times_s"]) or "not yet filled"
    a2.set(
        xlabel="step time (s; time between steps left out)",
        ylabel="cumulative |B_hq|",
        title=f"Time to fill the buffer ({threshold or '?'} rows): {fills}",
    )
    return _save(fig, path, data)


# --------------------------------------------------------------------------- training


def fig_training_loss(store: Store, path: Path, title: str = "") -> Data:
    """Eq. 3 loss per optimiser step of every trained adapter (from `adapters.metrics.losses`).

    Adapters with identical losses (two members on one base fitted on the same rows) are drawn
    once under a joint legend entry and a note; other series that share a point are offset
    sideways.

    Data: {"losses": {member: {"v<N>": [loss, ...]}} for adapters that finished training,
    "identical": [[series, ...]] drawn as one, "offsets": {series: optimiser-step shift}}, a
    series named "<member> v<N>".
    """
    losses_by: Data = {}
    for member, version, metrics in round_store.trained_metrics(store):
        try:
            losses = json.loads(metrics).get("losses") or []
        except (json.JSONDecodeError, AttributeError):
            continue
        if losses:
            losses_by.setdefault(member, {})[f"v{version}"] = [float(x) for x in losses]
    series = {
        f"{member} {version}": (list(range(1, len(ls) + 1)), ls)
        for member, versions in losses_by.items()
        for version, ls in versions.items()
    }
    groups = identical_groups(series)
    drawn = {" = ".join(g) + (" (identical)" if len(g) > 1 else ""): series[g[0]] for g in groups}
    offsets = series_offsets(drawn, DODGE)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, (xs, ys) in drawn.items():
        ax.plot([x + offsets[label] for x in xs], ys, marker=".", label=label)
    if drawn:
        ax.legend(fontsize=8)
        step_axis(ax, [x for xs, _ in drawn.values() for x in xs])
    else:
        _empty(ax, "trained adapters")
    identical = [g for g in groups if len(g) > 1]
    if identical:
        note(ax, _identical_note(identical, "losses, drawn once"))
    ax.set(
        xlabel="optimiser step",
        ylabel="NLL of solution tokens (Eq. 3)",
        title=f"LoRA training loss {title}".strip(),
    )
    return _save(fig, path, {"losses": losses_by, "identical": identical, "offsets": offsets})


# --------------------------------------------------------------------------- knowledge flow


def knowledge_flow(store: Store, members: list[str]) -> Data:
    """Who learned from whom: {"members", "elite": [[...]], "training": [[...]]}.

    Rows are learners, columns teachers (both in `members` order).
    - elite[i][j]: elite examples authored by j shown in i's solve prompts
      (`solutions.elite_ids` -> `elite.member`).
    - training[i][j]: buffer rows authored by j that the trainer fitted into an adapter of i
      (every row of the round in AGORA mode, only i's own rows in isolated mode; an adapter counts
      once it finished training: ready, live or retired).
    """
    names = list(members)
    extra = report_store.solving_members(store)
    names += sorted(m for m in extra if m not in names)
    idx = {m: i for i, m in enumerate(names)}
    elite = [[0] * len(names) for _ in names]
    author = report_store.elite_authors(store)
    for solver, shown in report_store.elite_shown(store):
        for eid in shown:
            if eid in author:
                elite[idx[solver]][idx[author[eid]]] += 1
    training = [[0] * len(names) for _ in names]
    rounds = round_store.round_buffer_ids(store)
    buffer_author = report_store.buffer_authors(store)
    for learner, round_id, metrics in round_store.trained_rounds(store):
        # The rows the trainer actually fitted (isolated runs fit only the member's own rows);
        # older stores without that record: every row of the round.
        fitted = json.loads(metrics or "{}").get("buffer_ids")
        for bid in fitted if fitted is not None else rounds.get(round_id, []):
            teacher = buffer_author.get(bid)
            if teacher is None:
                continue
            training[idx[learner]][idx[teacher]] += 1
    return {"members": names, "elite": elite, "training": training}


def fig_knowledge_flow(store: Store, path: Path, members: list[str], title: str = "") -> Data:
    """The knowledge-flow matrix as two annotated heatmaps (elite examples, training rows)."""
    data = knowledge_flow(store, members)
    names = data["members"]
    fig, axes = plt.subplots(1, 2, figsize=(5.5 * 2, 0.9 * len(names) + 2.5))
    panels = [
        ("elite", "via elite examples in solve prompts"),
        ("training", "via buffer rows in LoRA training"),
    ]
    for ax, (key, label) in zip(axes, panels, strict=True):
        m = data[key]
        ax.set_title(label)
        if not names:  # no config members and nothing written yet: imshow cannot draw 0x0
            _empty(ax, "members")
            continue
        ax.imshow(m, cmap="Blues", vmin=0, vmax=max(1, max(max(r) for r in m) if m else 1))
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_yticks(range(len(names)), names)
        ax.set(xlabel="teacher (author)", ylabel="learner", title=label)
        peak = max((max(r) for r in m), default=0)
        for i, row in enumerate(m):
            for j, v in enumerate(row):
                ax.text(
                    j,
                    i,
                    str(v),
                    ha="center",
                    va="center",
                    color="white" if peak and v > peak / 2 else "black",
                )
    fig.suptitle(f"Knowledge flow {title}".strip())
    return _save(fig, path, data)


# --------------------------------------------------------------------------- across runs


def fig_group_comparison(
    scores: dict[str, dict[str, dict[str, float]]],
    path: Path,
    ns: dict[str, dict[str, dict[str, int]]] | None = None,
) -> Data:
    """Figure 5: grouped bars, one group per run, one bar per member (+ majority), per benchmark,
    with 95% Wilson error bars from `ns` ({run: {benchmark: {member: n}}}).

    Data: {"scores": `scores`, "ci95": {run: {benchmark: {member: [lo, hi]}}}}.
    """
    ns = ns or {}
    ci: Data = {}
    benches = sorted({b for per in scores.values() for b in per})
    fig, axes = plt.subplots(1, max(1, len(benches)), figsize=(6 * max(1, len(benches)), 4), squeeze=False)
    if not benches:
        _empty(axes[0][0], "scores")
    for ax, bench in zip(axes[0], benches, strict=False):
        runs = [r for r in scores if bench in scores[r]]
        members = sorted({m for r in runs for m in scores[r][bench]}, key=lambda m: (m == MAJORITY, m))
        width = 0.8 / max(1, len(members))
        for k, member in enumerate(members):
            xs = [i + k * width for i in range(len(runs))]
            ys = [scores[r][bench].get(member, math.nan) for r in runs]
            n = [ns.get(r, {}).get(bench, {}).get(member) for r in runs]
            have = [i for i, y in enumerate(ys) if y == y]
            lo, hi = intervals([ys[i] for i in have], [n[i] for i in have])
            for i, a, b in zip(have, lo, hi, strict=True):
                ci.setdefault(runs[i], {}).setdefault(bench, {})[member] = [a, b]
            err = [[0.0] * len(ys), [0.0] * len(ys)]
            for i, a, b in zip(have, lo, hi, strict=True):
                err[0][i], err[1][i] = max(0.0, ys[i] - a), max(0.0, b - ys[i])
            bars = ax.bar(xs, ys, width, label=member, yerr=err, capsize=3)
            label_zero_bars(ax, bars)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(runs))], runs, rotation=20, ha="right")
        ax.set(ylabel="pass@1", title=f"Group comparison: {bench}", ylim=(0, 1.02))
        ax.legend(fontsize=8)
    return _save(fig, path, {"scores": scores, "ci95": ci})


def fig_mode_comparison(curves: dict[str, list[AnchorCurve]], path: Path) -> Data:
    """Figure 6: AGORA against the isolated control: the group's anchor score against step.

    `curves` is {mode: [{"step": [...], "score": [...]}, ...]} (one curve per run); the plotted
    (and written) data is each mode's mean over its runs at every step they share.
    """
    data: Data = {}
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for mode, runs in sorted(curves.items()):
        by_step: dict[int, list[float]] = defaultdict(list)
        counts: dict[int, list[int]] = defaultdict(lambda: [0, 0])
        for c in runs:
            for i, (s, v) in enumerate(zip(c["step"], c["score"], strict=True)):
                by_step[s].append(v)
                if "n" in c:
                    counts[s][0] += c["k"][i]
                    counts[s][1] += c["n"][i]
        common = sorted(s for s, vs in by_step.items() if len(vs) == len(runs))
        mean = [sum(by_step[s]) / len(by_step[s]) for s in common]
        # The band: 95% Wilson interval of every member's anchor answers at that step, pooled.
        bounds = [wilson(*counts[s]) for s in common]
        lo, hi = [b[0] for b in bounds], [b[1] for b in bounds]
        data[mode] = {"step": common, "score": mean, "runs": len(runs), "lo": lo, "hi": hi}
    # Modes whose curves coincide are offset sideways and named identical, so neither hides.
    shift = series_offsets({m: (d["step"], d["score"]) for m, d in data.items()}, DODGE)
    first = {
        m: g[0] for g in identical_groups({m: (d["step"], d["score"]) for m, d in data.items()}) for m in g
    }
    for mode, d in data.items():
        same = f", identical to {first[mode]}" if first[mode] != mode else ""
        xs = [s + shift[mode] for s in d["step"]]
        (line,) = ax.plot(xs, d["score"], marker="o", label=f"{mode} ({d['runs']} run(s){same})")
        ax.fill_between(xs, d["lo"], d["hi"], color=line.get_color(), alpha=0.15)
    step_axis(ax, [s for d in data.values() for s in d["step"]])
    if not data:
        _empty(ax, "anchor scores")
    else:
        ax.legend()
    ax.set(
        xlabel="step",
        ylabel="members' mean anchor pass@1",
        title="AGORA vs isolated evolution",
        ylim=(-0.02, 1.02),
    )
    return _save(fig, path, data)
