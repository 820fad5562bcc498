"""The paper's figures, drawn from run stores (matplotlib, Agg backend, PNG).

Every `fig_*` function computes its data from the store(s), draws one PNG, writes the same data
as JSON next to it (`<name>.json`), and returns it, so a reader (or a test) can check a figure's
values without reading pixels. Data is plain dicts of lists.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, NotRequired, TypedDict

import matplotlib

matplotlib.use("Agg")  # no display, ever: reports are rendered on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402

from agora_cli.evaluation.stats import successes, wilson  # noqa: E402
from agora_cli.protocol.majority import MAJORITY  # noqa: E402
from agora_cli.store import Store  # noqa: E402

Data = dict[str, Any]


class AnchorCurve(TypedDict):
    """One run's group anchor score per anchored step, with the pooled counts behind it."""

    step: list[int]
    score: list[float]
    k: NotRequired[list[int]]  # anchor answers right at that step, over members
    n: NotRequired[list[int]]  # anchor answers graded at that step, over members


def _save(fig: Any, path: Path, data: Data) -> Data:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    path.with_suffix(".json").write_text(json.dumps(data, indent=2, ensure_ascii=False))
    return data


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
    ax.text(
        0.5, 0.5, f"no {what} in this run yet", ha="center", va="center", transform=ax.transAxes, color="gray"
    )


# --------------------------------------------------------------------------- Figure 1


def _member_colors(members: list[str]) -> dict[str, Any]:
    """One color per member, the same in every panel (anchor line and eval stars); majority black."""
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    plain = [m for m in members if m != MAJORITY]
    colors: dict[str, Any] = {m: cycle[i % len(cycle)] for i, m in enumerate(plain)}
    colors[MAJORITY] = "black"
    return colors


def fig_scores_vs_step(
    store: Store,
    path: Path,
    title: str = "",
    evals: Data | None = None,
    evals_without_step: list[str] | None = None,
) -> Data:
    """Figure 1: benchmark score against step, one color per member and `@majority`.

    Lines are the external anchor (the calibration subset, from the `anchors` table); stars are
    full `agora eval` results at the step each was taken. `evals` is
    {benchmark: {member: {"step": [...], "score": [...], ...}}} (see `report.eval_points`); a
    benchmark with evaluations but no anchors gets its own panel.

    Data: {"anchors": {benchmark: {member: {"step", "score"}}}, "evals": `evals` as given,
    "evals_without_step": names of evaluations not drawn because they recorded no step}.
    """
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    evals = evals or {}
    rows = store.query("SELECT step, member, benchmark, score, n FROM anchors ORDER BY step, member")
    anchors: Data = {}
    for r in rows:
        line = anchors.setdefault(r["benchmark"], {}).setdefault(
            r["member"], {"step": [], "score": [], "n": [], "lo": [], "hi": []}
        )
        line["step"].append(r["step"])
        line["score"].append(r["score"])
        line["n"].append(r["n"])
        lo, hi = intervals([r["score"]], [r["n"]])
        line["lo"] += lo
        line["hi"] += hi
    for per in evals.values():  # each star's 95% interval, from the n it was scored on
        for pts in per.values():
            pts["lo"], pts["hi"] = intervals(pts["score"], pts.get("n") or [None] * len(pts["score"]))
    benches = list(anchors) + [b for b in evals if b not in anchors]
    members = [m for per in (*anchors.values(), *evals.values()) for m in per]
    colors = _member_colors(list(dict.fromkeys(members)))
    n = max(1, len(benches))
    fig, axes = plt.subplots(1, n, figsize=(6 * n, 4), squeeze=False)
    if not benches:
        _empty(axes[0][0], "anchor scores or evaluations with a step")
    for ax, bench in zip(axes[0], benches, strict=False):
        lines, stars = anchors.get(bench, {}), evals.get(bench, {})
        for member, line in lines.items():
            style = "--" if member == MAJORITY else "-"
            ax.errorbar(
                line["step"],
                line["score"],
                yerr=_yerr(line["score"], line["lo"], line["hi"]),
                marker="o",
                linestyle=style,
                color=colors[member],
                capsize=3,
                elinewidth=0.8,
            )
        # Majority first and larger: where it equals a member's score it rings that member's star
        # instead of hiding it. Unlabelled: the legend names each member and marker kind once.
        for member, pts in sorted(stars.items(), key=lambda kv: kv[0] != MAJORITY):
            ax.errorbar(
                pts["step"],
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
            )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
        shown = sorted(dict.fromkeys([*lines, *stars]), key=lambda m: m == MAJORITY)
        handles = [
            Line2D([], [], color=colors[m], linestyle="--" if m == MAJORITY else "-", label=m) for m in shown
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
        what = " + ".join(k for k, has in (("anchor", lines), ("eval", stars)) if has)
        ax.set(
            xlabel="step",
            ylabel="pass@1 (bars: 95% Wilson CI)",
            title=f"{bench} ({what}) {title}".strip(),
            ylim=(-0.02, 1.02),
        )
        ax.legend(handles=handles, fontsize=8)
    data = {"anchors": anchors, "evals": evals, "evals_without_step": evals_without_step or []}
    return _save(fig, path, data)


# --------------------------------------------------------------------------- Figure 3


def fig_difficulty_length(store: Store, path: Path, title: str = "") -> Data:
    """Figure 3: difficulty d_t and response length against performance.

    Data: {"difficulty": {"step", "d", "v_t", "v_lo", "v_hi"}, "length": {member: {"step",
    "mean_tokens", "correct_rate", "n", "lo", "hi"}}}: per committed step, d_t against consensus
    pass@1 V_t; per member and step, mean completion tokens of its solutions against the share
    judged correct; lo/hi are 95% Wilson bounds (error bars).
    """
    steps = store.query(
        "SELECT step, difficulty, v_t, n_correct, n_solutions FROM steps "
        "WHERE committed_at IS NOT NULL AND v_t IS NOT NULL ORDER BY step"
    )
    diff = {
        "step": [r["step"] for r in steps],
        "d": [r["difficulty"] for r in steps],
        "v_t": [r["v_t"] for r in steps],
    }
    # V_t = n_correct / n_solutions: its 95% Wilson interval (whole [0, 1] when n is unknown).
    diff["v_lo"], diff["v_hi"] = intervals(diff["v_t"], [r["n_solutions"] for r in steps])
    rows = store.query(
        "SELECT s.member, s.step, AVG(s.completion_tokens) AS tokens, AVG(s.correct) AS rate, "
        "COUNT(*) AS n "
        "FROM solutions s JOIN steps t ON t.step = s.step "
        "WHERE t.committed_at IS NOT NULL AND s.error IS NULL AND s.correct IS NOT NULL "
        "AND s.completion_tokens IS NOT NULL GROUP BY s.member, s.step ORDER BY s.member, s.step"
    )
    length: Data = {}
    for r in rows:
        d = length.setdefault(
            r["member"], {"step": [], "mean_tokens": [], "correct_rate": [], "n": [], "lo": [], "hi": []}
        )
        d["step"].append(r["step"])
        d["mean_tokens"].append(r["tokens"])
        d["correct_rate"].append(r["rate"])
        d["n"].append(r["n"])
        lo, hi = intervals([r["rate"]], [r["n"]])
        d["lo"] += lo
        d["hi"] += hi
    data = {"difficulty": diff, "length": length}
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    if diff["step"]:
        a1.errorbar(
            diff["d"],
            diff["v_t"],
            yerr=_yerr(diff["v_t"], diff["v_lo"], diff["v_hi"]),
            linestyle="none",
            color="gray",
            elinewidth=0.8,
            capsize=2,
            zorder=1,
        )
        sc = a1.scatter(diff["d"], diff["v_t"], c=diff["step"], cmap="viridis", zorder=2)
        fig.colorbar(sc, ax=a1, label="step")
    else:
        _empty(a1, "committed steps")
    a1.set(
        xlabel="difficulty d_t (Eq. 1)",
        ylabel="consensus pass@1 V_t",
        title=f"Difficulty vs performance {title}".strip(),
    )
    for member, d in length.items():
        a2.errorbar(
            d["mean_tokens"],
            d["correct_rate"],
            yerr=_yerr(d["correct_rate"], d["lo"], d["hi"]),
            linestyle="none",
            marker="o",
            label=member,
            alpha=0.8,
            capsize=2,
            elinewidth=0.8,
        )
    if length:
        a2.legend(fontsize=8)
    else:
        _empty(a2, "graded solutions")
    a2.set(
        xlabel="mean response length (completion tokens)",
        ylabel="share judged correct",
        title="Response length vs performance (member x step)",
    )
    return _save(fig, path, data)


# --------------------------------------------------------------------------- Figure 4


def fig_yield(store: Store, path: Path, threshold: int | None = None, title: str = "") -> Data:
    """Figure 4: high-quality yield per step and time to fill the buffer.

    Data: {"step", "buffered", "solutions", "yield_rate", "elapsed_s", "cumulative",
    "threshold", "fill_times_s"}: buffer rows added per committed step (and their share of the
    step's solutions), the cumulative buffer size against wall time since the first step, and the
    wall time each successive `threshold` rows took to accumulate (one training round each).
    """
    steps = store.query(
        "SELECT step, started_at, committed_at FROM steps WHERE committed_at IS NOT NULL ORDER BY step"
    )
    buffered: dict[int, int] = {
        r[0]: r[1] for r in store.query("SELECT step, COUNT(*) FROM buffer GROUP BY step")
    }
    solutions: dict[int, int] = {
        r[0]: r[1]
        for r in store.query("SELECT step, COUNT(*) FROM solutions WHERE error IS NULL GROUP BY step")
    }
    t0 = steps[0]["started_at"] if steps else 0.0
    data: Data = {
        "step": [],
        "buffered": [],
        "solutions": [],
        "yield_rate": [],
        "elapsed_s": [],
        "cumulative": [],
        "threshold": threshold,
        "fill_times_s": [],
    }
    total, last_fill = 0, 0.0
    for r in steps:
        b, n = int(buffered.get(r["step"], 0)), int(solutions.get(r["step"], 0))
        total += b
        elapsed = r["committed_at"] - t0
        data["step"].append(r["step"])
        data["buffered"].append(b)
        data["solutions"].append(n)
        data["yield_rate"].append(b / n if n else 0.0)
        data["elapsed_s"].append(round(elapsed, 3))
        data["cumulative"].append(total)
        while threshold and total >= threshold * (len(data["fill_times_s"]) + 1):
            data["fill_times_s"].append(round(elapsed - last_fill, 3))
            last_fill = elapsed
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    if data["step"]:
        a1.bar(data["step"], data["buffered"], color="tab:green")
        a1b = a1.twinx()
        a1b.plot(data["step"], data["yield_rate"], color="black", marker=".")
        a1b.set_ylabel("share of solutions kept")
        a2.plot(data["elapsed_s"], data["cumulative"], marker=".")
        if threshold:
            for k in range(1, len(data["fill_times_s"]) + 1):
                a2.axhline(threshold * k, color="gray", linestyle=":")
    else:
        _empty(a1, "committed steps")
    a1.set(
        xlabel="step",
        ylabel="rows entering B_hq (Eq. 4)",
        title=f"High-quality yield per step {title}".strip(),
    )
    fills = ", ".join(f"{t:.0f}s" for t in data["fill_times_s"]) or "not yet filled"
    a2.set(
        xlabel="wall time (s)",
        ylabel="cumulative |B_hq|",
        title=f"Time to fill the buffer ({threshold or '?'} rows): {fills}",
    )
    return _save(fig, path, data)


# --------------------------------------------------------------------------- training


def fig_training_loss(store: Store, path: Path, title: str = "") -> Data:
    """Eq. 3 loss per optimiser step of every trained adapter (from `adapters.metrics.losses`).

    Data: {member: {"v<N>": [loss, ...]}} for adapters that finished training.
    """
    data: Data = {}
    rows = store.query(
        "SELECT member, version, metrics FROM adapters WHERE metrics IS NOT NULL "
        "AND status IN ('ready', 'live', 'retired') ORDER BY member, version"
    )
    for r in rows:
        try:
            losses = json.loads(r["metrics"]).get("losses") or []
        except (json.JSONDecodeError, AttributeError):
            continue
        if losses:
            data.setdefault(r["member"], {})[f"v{r['version']}"] = [float(x) for x in losses]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for member, versions in data.items():
        for version, losses in versions.items():
            ax.plot(range(1, len(losses) + 1), losses, marker=".", label=f"{member} {version}")
    if data:
        ax.legend(fontsize=8)
    else:
        _empty(ax, "trained adapters")
    ax.set(
        xlabel="optimiser step",
        ylabel="NLL of solution tokens (Eq. 3)",
        title=f"LoRA training loss {title}".strip(),
    )
    return _save(fig, path, data)


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
    extra = [
        r[0]
        for r in store.query("SELECT DISTINCT member FROM solutions UNION SELECT DISTINCT member FROM buffer")
    ]
    names += sorted(m for m in extra if m not in names)
    idx = {m: i for i, m in enumerate(names)}
    elite = [[0] * len(names) for _ in names]
    author: dict[int, str] = {r[0]: r[1] for r in store.query("SELECT id, member FROM elite")}
    for r in store.query("SELECT member, elite_ids FROM solutions WHERE elite_ids != '[]'"):
        for eid in json.loads(r["elite_ids"]):
            if eid in author:
                elite[idx[r["member"]]][idx[author[eid]]] += 1
    training = [[0] * len(names) for _ in names]
    rounds = {r["id"]: json.loads(r["buffer_ids"]) for r in store.query("SELECT id, buffer_ids FROM rounds")}
    buffer_author: dict[int, str] = {r[0]: r[1] for r in store.query("SELECT id, member FROM buffer")}
    trained = store.query(
        "SELECT member, round_id, metrics FROM adapters WHERE round_id IS NOT NULL "
        "AND status IN ('ready', 'live', 'retired')"
    )
    for a in trained:
        # The rows the trainer actually fitted (isolated runs fit only the member's own rows);
        # older stores without that record: every row of the round.
        fitted = json.loads(a["metrics"] or "{}").get("buffer_ids")
        for bid in fitted if fitted is not None else rounds.get(a["round_id"], []):
            teacher = buffer_author.get(bid)
            if teacher is None:
                continue
            training[idx[a["member"]]][idx[teacher]] += 1
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
            ax.bar(xs, ys, width, label=member, yerr=err, capsize=3)
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
        steps = sorted(s for s, vs in by_step.items() if len(vs) == len(runs))
        mean = [sum(by_step[s]) / len(by_step[s]) for s in steps]
        # The band: 95% Wilson interval of every member's anchor answers at that step, pooled.
        bounds = [wilson(*counts[s]) for s in steps]
        lo, hi = [b[0] for b in bounds], [b[1] for b in bounds]
        data[mode] = {"step": steps, "score": mean, "runs": len(runs), "lo": lo, "hi": hi}
        (line,) = ax.plot(steps, mean, marker="o", label=f"{mode} ({len(runs)} run(s))")
        ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.15)
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
