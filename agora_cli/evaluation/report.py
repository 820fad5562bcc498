"""`agora report`: a Markdown report of one or more runs, with the paper's figures and tables.

Per run: benchmark score against step (Figure 1: the external anchor as lines, each `agora eval`
as stars at the step it was taken), difficulty and response length against performance
(Figure 3), high-quality yield and time to fill the buffer (Figure 4), the knowledge-flow matrix,
the adapters' training loss and the consensus audit (precision and recall against gold). Across
runs: group comparison (Figure 5), AGORA against the isolated control when both modes are given
(Figure 6), and tables shaped like the paper's Table 1
(per-model pass@1 per benchmark) and Table 2 (variants, mean ± standard deviation over seeds).
Everything is read from the run stores (read-only), each run's `config.yaml` and its
`evals/*/summary.json`.
"""

from __future__ import annotations

import csv
import io
import json
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agora_cli import report_store
from agora_cli.errors import EvaluationError, NoRunError
from agora_cli.evaluation import plots
from agora_cli.evaluation.audit_report import audit_section
from agora_cli.paths import RunPaths
from agora_cli.stats import (
    PairedBinary,
    PairedMeans,
    interval_text,
    p_text,
    paired_binary,
    paired_bootstrap,
    rate_text,
    significance_text,
    successes,
    wilson,
)
from agora_cli.store import Store

MAJORITY = plots.MAJORITY
SWITCHES = (
    "valid_vote",
    "lora",
    "quality_vote",
    "elite_icl",
    "random_qgen",
    "difficulty_control",
    "external_anchor",
    "explanation",
    "dynamic_strategy",
    "fem",
)


@dataclass
class RunInfo:
    """What the report needs to know about one run directory."""

    root: Path
    label: str
    config: dict[str, Any]
    members: list[str]
    mode: str = "agora"
    seed: int = 0
    variant: str = "full"
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)  # eval name -> summary.json
    # (eval name, summary) of every finished evaluation, from each directory's history.jsonl
    # (its summary.json alone for directories written before the history existed).
    eval_history: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


def variant_of(config: dict[str, Any]) -> str:
    """Table 2 row name: 'full', 'no-<switch>' (several joined by '+'), or 'isolated'."""
    if (config.get("protocol") or {}).get("mode") == "isolated":
        return "isolated"
    ablations = config.get("ablations") or {}
    off = [s for s in SWITCHES if ablations.get(s) is False]
    return "full" if not off else "+".join(f"no-{s.replace('_', '-')}" for s in off)


def load_run(root: Path | str) -> RunInfo:
    """Read a run directory's config and evaluation summaries (the store is opened per figure)."""
    paths = RunPaths(root)
    if not paths.store.exists():
        raise NoRunError(
            f"{paths.root} is not a run directory (no {paths.store.name}); pass the directory "
            "`agora run` wrote, e.g. runs/tiny"
        )
    config = yaml.safe_load(paths.config.read_text()) if paths.config.exists() else {}
    config = config or {}
    members = [m["name"] for m in config.get("members", []) if isinstance(m, dict) and "name" in m]
    evals: dict[str, dict[str, Any]] = {}
    history: list[tuple[str, dict[str, Any]]] = []
    if paths.evals.exists():
        for summary in sorted(paths.evals.glob("*/summary.json")):
            try:
                evals[summary.parent.name] = json.loads(summary.read_text())
            except json.JSONDecodeError:
                continue
            past = _read_history(summary.parent / "history.jsonl")
            history += [(summary.parent.name, s) for s in past or [evals[summary.parent.name]]]
    return RunInfo(
        root=paths.root,
        label=paths.root.name,
        config=config,
        members=members,
        mode=(config.get("protocol") or {}).get("mode", "agora"),
        seed=int(config.get("seed", 0)),
        variant=variant_of(config),
        evals=evals,
        eval_history=history,
    )


def _read_history(path: Path) -> list[dict[str, Any]]:
    """The summaries in an evaluation's history.jsonl; a torn or garbled line is skipped."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict):
            out.append(entry)
    return out


# --------------------------------------------------------------------------- scores


def anchor_curve(store: Store) -> dict[str, list[float]]:
    """The members' mean anchor score per anchored step ('@majority' left out), with the pooled
    counts (`k` right of `n` graded, over members) for its interval."""
    rows = report_store.anchor_curve_rows(store)
    return {
        "step": [step for step, _, _, _ in rows],
        "score": [score for _, score, _, _ in rows],
        "k": [k for _, _, k, _ in rows],
        "n": [n for _, _, _, n in rows],
    }


def eval_step(summary: dict[str, Any]) -> int | None:
    """The run's step an evaluation was taken at; None for summaries written before agora
    recorded it, or taken before the run's first committed step."""
    step = summary.get("step")
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def eval_points(run: RunInfo) -> tuple[dict[str, Any], list[str]]:
    """Figure 1's stars: the run's evaluations at the step each was taken.

    Returns ({benchmark: {member: {"step", "score", "n", "eval", "adapter_version"}}}, ordered
    by step then time written; the names of evaluations with no step, which are not drawn).
    """
    points: dict[str, Any] = {}
    undated: set[str] = set()
    latest: dict[tuple, tuple] = {}  # a repeated evaluation of the same adapters at one step: last
    for name, summary in run.eval_history or list(run.evals.items()):
        step = eval_step(summary)
        if step is None:
            undated.add(name)
            continue
        versions = json.dumps(summary.get("adapter_versions") or {}, sort_keys=True)
        key = (name, step, versions)
        if key not in latest or summary.get("written_at", 0) >= latest[key][1]:
            latest[key] = (step, summary.get("written_at", 0), name, summary)
    dated = list(latest.values())
    for step, _, name, summary in sorted(dated, key=lambda d: d[:3]):
        versions = summary.get("adapter_versions") or {}
        for bench, per in (summary.get("scores") or {}).items():
            for member, v in per.items():
                p = points.setdefault(bench, {}).setdefault(
                    member, {"step": [], "score": [], "n": [], "eval": [], "adapter_version": []}
                )
                p["step"].append(step)
                p["score"].append(v["score"])
                p["n"].append(v.get("n"))
                p["eval"].append(name)
                p["adapter_version"].append(versions.get(member))
    drawn = {name for _, _, name, _ in dated}
    return points, sorted(undated - drawn)


def _fig1_caption(run: RunInfo, points: dict[str, Any], without: list[str]) -> str:
    ev = run.config.get("evaluation") or {}
    every = (run.config.get("protocol") or {}).get("anchor_every", "?")
    text = (
        f"Lines: the external anchor, pass@1 on the calibration subset "
        f"({ev.get('calibration_size', '?')} items of {ev.get('calibration', '?')}_dev, a split "
        f"held out from the training data and from every evaluation, every {every} step(s)); "
        "error bars are 95% Wilson intervals. Stars: full `agora eval` results, drawn at the "
        "run's last committed step when the evaluation started, whatever adapter versions it "
        "evaluated (Table 1 lists them); same color per member, `@majority` in black."
    )
    drawn = {e for per in points.values() for p in per.values() for e in p["eval"]}
    if drawn:
        text += f" Evaluations drawn: {', '.join(f'`{e}`' for e in sorted(drawn))}."
    else:
        text += (
            " No evaluation with a step yet: run `agora eval CONFIG --run-dir RUN` after a "
            "step to add one (each evaluation into a directory is kept in its history.jsonl)."
        )
    if without:
        text += (
            f" Not drawn, no step recorded (written by an older agora, or taken before the "
            f"first committed step): {', '.join(f'`{w}`' for w in without)}."
        )
    return text


def final_scores(run: RunInfo) -> dict[str, dict[str, float]]:
    """{benchmark: {member: pass@1}} of a run: its latest evaluation per benchmark, falling back
    to the last external anchor (benchmark named '<calibration> (anchor)')."""
    out: dict[str, dict[str, float]] = {}
    ordered = sorted(run.evals.values(), key=lambda s: s.get("written_at", 0))
    for summary in ordered:  # later evaluations overwrite earlier ones
        for bench, per in (summary.get("scores") or {}).items():
            out[bench] = {m: v["score"] for m, v in per.items()}
    if out:
        return out
    with Store(RunPaths(run.root).store, readonly=True) as store:
        for r in report_store.latest_anchors(store):
            out.setdefault(f"{r.benchmark} (anchor)", {})[r.member] = r.score
    return out


def final_ns(run: RunInfo) -> dict[str, dict[str, int]]:
    """{benchmark: {member: n}} matching `final_scores` (for the intervals of Figure 5)."""
    out: dict[str, dict[str, int]] = {}
    for summary in sorted(run.evals.values(), key=lambda s: s.get("written_at", 0)):
        for bench, per in (summary.get("scores") or {}).items():
            out[bench] = {m: int(v.get("n") or 0) for m, v in per.items()}
    if out:
        return out
    with Store(RunPaths(run.root).store, readonly=True) as store:
        for r in report_store.latest_anchors(store):
            out.setdefault(f"{r.benchmark} (anchor)", {})[r.member] = int(r.n or 0)
    return out


def item_outcomes(run: RunInfo) -> dict[str, dict[str, dict[str, bool]]]:
    """{benchmark: {member: {item id: correct}}} of the run's latest evaluation per benchmark,
    from its results.jsonl (only rows of the models that evaluation scored). Empty when the run
    has no item-level results (then comparisons pair on seeds only)."""
    from agora_cli.evaluation.evaluate import read_results

    out: dict[str, dict[str, dict[str, bool]]] = {}
    for name, summary in sorted(run.evals.items(), key=lambda kv: kv[1].get("written_at", 0)):
        models = summary.get("models") or {}
        order = [m for m in (summary.get("members") or list(models)) if m in models]
        wanted = {**models, MAJORITY: "+".join(models[m] for m in order)}
        rows = read_results(RunPaths(run.root).evals / name / "results.jsonl")
        for bench in summary.get("scores") or {}:
            per: dict[str, dict[str, bool]] = {}
            for r in rows:
                if r.benchmark == bench and r.model == wanted.get(r.member):
                    per.setdefault(r.member, {})[r.item_id] = bool(r.correct)
            if per:
                out[bench] = per
    return out


def group_item_values(per_member: dict[str, dict[str, bool]]) -> dict[str, float]:
    """{item id: share of members right} over the items every member answered (majority out)."""
    members = [m for m in per_member if m != MAJORITY]
    if not members:
        return {}
    shared = set.intersection(*(set(per_member[m]) for m in members))
    return {i: sum(per_member[m][i] for m in members) / len(members) for i in sorted(shared)}


def group_mean(per_member: dict[str, float]) -> float:
    """The group's pass@1: mean over members, '@majority' left out."""
    vals = [v for m, v in per_member.items() if m != MAJORITY]
    return sum(vals) / len(vals) if vals else float("nan")


# --------------------------------------------------------------------------- tables


def _fmt(mean: float, sd: float | None) -> str:
    return f"{100 * mean:.1f}" if sd is None else f"{100 * mean:.1f} ± {100 * sd:.1f}"


def _rate_cell(entry: dict[str, Any]) -> str:
    """`60.0 [31.3, 83.2]`: pass@1 (%) and its 95% Wilson interval (the rate alone without n)."""
    score, n = entry["score"], int(entry.get("n") or 0)
    if not n:
        return _fmt(score, None)
    return f"{100 * score:.1f} {interval_text(*wilson(successes(score, n), n))}"


def table1(runs: list[RunInfo]) -> str:
    """Table 1 shape: one row per (run, member, adapter version), pass@1 (%) per benchmark with
    its 95% Wilson interval."""
    rows: list[tuple[str, str, str, dict[str, dict[str, Any]]]] = []
    benches: list[str] = []
    for run in runs:
        for name, summary in sorted(run.evals.items(), key=lambda kv: kv[1].get("written_at", 0)):
            scores = summary.get("scores") or {}
            versions = summary.get("adapter_versions") or {}
            members = sorted({m for per in scores.values() for m in per}, key=lambda m: (m == MAJORITY, m))
            for b in scores:
                if b not in benches:
                    benches.append(b)
            for m in members:
                v = versions.get(m)
                version = "" if m == MAJORITY else ("base" if not v else f"v{v}")
                rows.append(
                    (
                        run.label,
                        f"{m} {version}".strip(),
                        name,
                        {b: scores[b][m] for b in scores if m in scores[b]},
                    )
                )
    if not rows:
        return "_No evaluations yet: run `agora eval CONFIG --run-dir RUN` first._\n"
    head = "| run | model | eval | " + " | ".join(benches) + " |\n"
    head += "|---|---|---|" + "---:|" * len(benches) + "\n"
    body = "".join(
        f"| {r} | {m} | {e} | " + " | ".join(_rate_cell(s[b]) if b in s else "–" for b in benches) + " |\n"
        for r, m, e, s in rows
    )
    return head + body


def table2(
    values: dict[str, list[dict[str, float]]],
    paired: dict[str, dict[str, PairedMeans]] | None = None,
) -> tuple[str, str]:
    """Table 2 shape: {variant: [one {benchmark: score} per seed]} -> (Markdown, CSV).

    Cells are mean ± sample standard deviation over seeds, in percent; 'full' comes first. With
    `paired` ({variant: {benchmark: variant - full}}, see `paired_variants`), each benchmark gets
    a `Δ vs full` column: the paired difference in points, its bootstrap 95% interval and p.
    """
    paired = paired or {}
    benches: list[str] = []
    for per_seed in values.values():
        for s in per_seed:
            benches += [b for b in s if b not in benches]
    order = sorted(values, key=lambda v: (v != "full", v))
    delta_cols = [b for b in benches if any(b in per for per in paired.values())]
    md = (
        "| variant | seeds | "
        + " | ".join([*benches, *(f"{b} Δ vs full [95% CI], p" for b in delta_cols)])
        + " |\n"
    )
    md += "|---|---:|" + "---:|" * (len(benches) + len(delta_cols)) + "\n"
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(
        [
            "variant",
            "seeds",
            *[f"{b}_{k}" for b in benches for k in ("mean", "sd")],
            *[f"{b}_{k}" for b in delta_cols for k in ("delta", "delta_lo", "delta_hi", "p", "pairs")],
        ]
    )
    for variant in order:
        per_seed = values[variant]
        cells, csv_cells = [], []
        for b in benches:
            xs = [s[b] for s in per_seed if b in s and s[b] == s[b]]  # drop NaN
            if not xs:
                cells.append("–")
                csv_cells += ["", ""]
                continue
            mean = statistics.fmean(xs)
            sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
            cells.append(_fmt(mean, sd))
            csv_cells += [f"{mean:.6f}", f"{sd:.6f}"]
        for b in delta_cols:
            r = paired.get(variant, {}).get(b)
            if r is None or not r.n:
                cells.append("–")
                csv_cells += ["", "", "", "", ""]
                continue
            cells.append(f"{100 * r.diff:+.1f} {interval_text(r.lo, r.hi)}, {p_text(r.p)}")
            csv_cells += [f"{r.diff:.6f}", f"{r.lo:.6f}", f"{r.hi:.6f}", f"{r.p:.6f}", r.n]
        md += f"| {variant} | {len(per_seed)} | " + " | ".join(cells) + " |\n"
        w.writerow([variant, len(per_seed), *csv_cells])
    return md, buf.getvalue()


def run_pairs(
    seed: int, scores: dict[str, dict[str, float]], items: dict[str, dict[str, dict[str, bool]]]
) -> dict[str, dict[str, float]]:
    """One run's values to pair across variants: {benchmark: {key: group pass@1}}, keyed by
    `seed/item` when item-level results exist, else by `seed` (the run's group mean)."""
    out: dict[str, dict[str, float]] = {}
    for bench, per in scores.items():
        by_item = group_item_values(items.get(bench, {}))
        if by_item:
            out[bench] = {f"{seed}/{i}": v for i, v in by_item.items()}
        else:
            out[bench] = {str(seed): group_mean(per)}
    return out


def paired_variants(
    pairs: dict[str, list[dict[str, dict[str, float]]]],
) -> dict[str, dict[str, PairedMeans]]:
    """{variant: {benchmark: paired bootstrap of variant - full}} over the keys (seed/item, or
    seed) both have; `pairs` is {variant: [`run_pairs` of each of its runs]}."""

    def merged(runs: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for r in runs:
            for bench, vals in r.items():
                out.setdefault(bench, {}).update(vals)
        return out

    if "full" not in pairs:
        return {}
    full = merged(pairs["full"])
    result: dict[str, dict[str, PairedMeans]] = {}
    for variant, runs in pairs.items():
        if variant == "full":
            continue
        for bench, vals in merged(runs).items():
            keys = sorted(set(vals) & set(full.get(bench, {})))
            if keys:
                result.setdefault(variant, {})[bench] = paired_bootstrap(
                    [full[bench][k] for k in keys], [vals[k] for k in keys]
                )
    return result


def variant_sentences(paired: dict[str, dict[str, PairedMeans]]) -> list[str]:
    """Which Table 2 differences from full AGORA are significant at 0.05, in words."""
    lines = []
    for variant in sorted(paired):
        for bench, r in paired[variant].items():
            lines.append(
                f"- `{variant}` against `full` on {bench}: {100 * r.diff:+.1f} points "
                f"{interval_text(r.lo, r.hi)} over {r.n} pairs, "
                f"{significance_text(r.p)} (paired bootstrap)."
            )
    return lines


def mode_comparison(runs: list[RunInfo]) -> tuple[str, list[str]]:
    """AGORA against the isolated control on the same evaluation items: a Markdown table of
    exact McNemar tests per benchmark and member (`@majority` included), and one sentence each.
    Runs are paired by seed when both modes have that seed, else every AGORA run with every
    isolated run."""
    agora = [r for r in runs if r.mode == "agora" and r.variant == "full"]
    isolated = [r for r in runs if r.mode == "isolated"]
    pairs = [(a, i) for a in agora for i in isolated if a.seed == i.seed] or [
        (a, i) for a in agora for i in isolated
    ]
    rows: list[tuple[str, str, str, str, PairedBinary]] = []
    for a, i in pairs:
        ia, ii = item_outcomes(a), item_outcomes(i)
        for bench in [b for b in ia if b in ii]:
            members = [m for m in ia[bench] if m in ii[bench]]
            for m in sorted(members, key=lambda m: (m == MAJORITY, m)):
                r = paired_binary(ia[bench][m], ii[bench][m])
                if r.n:
                    rows.append((a.label, i.label, bench, m, r))
    if not rows:
        return (
            "_No paired comparison: both runs need `agora eval` results on the same "
            "benchmark items (results.jsonl)._\n",
            [],
        )
    md = (
        "| AGORA run | isolated run | benchmark | member | AGORA pass@1 [95% CI] | "
        "isolated pass@1 [95% CI] | only AGORA right | only isolated right | McNemar p |\n"
        "|---|---|---|---|---:|---:|---:|---:|---:|\n"
    )
    words = []
    for a, i, bench, m, r in rows:
        md += (
            f"| {a} | {i} | {bench} | {m} | {rate_text(r.k_a, r.n)} | {rate_text(r.k_b, r.n)}"
            f" | {r.only_a} | {r.only_b} | {p_text(r.p)} |\n"
        )
        words.append(
            f"- {m} on {bench} (`{a}` vs `{i}`, {r.n} shared items): "
            f"{100 * (r.k_a - r.k_b) / r.n:+.1f} points, {significance_text(r.p)} (exact McNemar)."
        )
    return md, words


# --------------------------------------------------------------------------- the report


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "run"


def build_report(run_dirs: list[Path | str], out: Path | None = None) -> Path:
    """Render the report for `run_dirs` into `out` (default: `<run>/report` for one run,
    `./agora-report` for several). Returns the Markdown file's path."""
    if not run_dirs:
        raise EvaluationError("give at least one run directory")
    runs = [load_run(d) for d in run_dirs]
    labels = [r.label for r in runs]
    if len(set(labels)) != len(labels):  # same directory names under different parents
        for i, r in enumerate(runs):
            r.label = f"{r.label}-{i}"
    out = Path(out) if out else (RunPaths(runs[0].root).report if len(runs) == 1 else Path("agora-report"))
    out.mkdir(parents=True, exist_ok=True)
    md = ["# AGORA report", ""]
    md.append("Runs: " + ", ".join(f"`{r.label}` ({r.mode}, {r.variant}, seed {r.seed})" for r in runs))
    md.append("")
    curves: dict[str, list[dict[str, list[float]]]] = {}
    for run in runs:
        slug = _slug(run.label)
        threshold = (run.config.get("protocol") or {}).get("buffer_threshold")
        with Store(RunPaths(run.root).store, readonly=True) as store:
            points, without = eval_points(run)
            plots.fig_scores_vs_step(
                store, out / f"{slug}-fig1-anchor.png", run.label, evals=points, evals_without_step=without
            )
            plots.fig_difficulty_length(store, out / f"{slug}-fig3-difficulty-length.png", run.label)
            plots.fig_yield(store, out / f"{slug}-fig4-yield.png", threshold, run.label)
            plots.fig_knowledge_flow(store, out / f"{slug}-knowledge-flow.png", run.members, run.label)
            plots.fig_training_loss(store, out / f"{slug}-training-loss.png", run.label)
            curves.setdefault(run.mode, []).append(anchor_curve(store))
            audit_md = audit_section(store, out, slug, run.label)
        md += [
            f"## Run `{run.label}`",
            "",
            f"Directory: `{run.root}`; members: {', '.join(run.members) or '?'}.",
            "",
            "### Figure 1: benchmark score against step (anchors as lines, evaluations as stars)",
            "",
            f"![Figure 1, {run.label}]({slug}-fig1-anchor.png)",
            "",
            _fig1_caption(run, points, without),
            "",
            "### Figure 3: difficulty and response length against performance",
            "",
            f"![Figure 3, {run.label}]({slug}-fig3-difficulty-length.png)",
            "",
            "### Figure 4: high-quality yield per step and time to fill the buffer",
            "",
            f"![Figure 4, {run.label}]({slug}-fig4-yield.png)",
            "",
            "### Knowledge flow",
            "",
            f"![Knowledge flow, {run.label}]({slug}-knowledge-flow.png)",
            "",
            "Rows are learners, columns teachers. Left: how many elite examples written by the "
            "teacher appeared in the learner's solve prompts (in-context learning from the elite "
            "history H_t). Right: how many buffer rows written by the teacher the learner was "
            "fine-tuned on (LoRA rounds that produced one of its adapters). The diagonal is "
            "self-learning.",
            "",
            "### LoRA training loss (Eq. 3)",
            "",
            f"![Training loss, {run.label}]({slug}-training-loss.png)",
            "",
            *audit_md,
        ]
    scores = {r.label: final_scores(r) for r in runs}
    md += ["## Figure 5: group comparison across runs", ""]
    plots.fig_group_comparison(scores, out / "fig5-groups.png", ns={r.label: final_ns(r) for r in runs})
    md += [
        "![Figure 5](fig5-groups.png)",
        "",
        "Each run's latest evaluation per benchmark (or, without one, its last external "
        "anchor); error bars are 95% Wilson intervals.",
        "",
    ]
    if {"agora", "isolated"} <= set(curves):
        plots.fig_mode_comparison(curves, out / "fig6-agora-vs-isolated.png")
        md += [
            "## Figure 6: AGORA against isolated evolution",
            "",
            "![Figure 6](fig6-agora-vs-isolated.png)",
            "",
            "Members' mean anchor pass@1 per step, averaged over the runs of each mode; the "
            "band is the 95% Wilson interval of the pooled anchor answers.",
            "",
        ]
    if any(r.mode == "isolated" for r in runs) and any(r.mode == "agora" for r in runs):
        cmp_md, cmp_words = mode_comparison(runs)
        md += ["## AGORA against isolated evolution, paired on the same items", "", cmp_md, ""]
        md += cmp_words + ([""] if cmp_words else [])
    md += ["## Table 1: pass@1 (%) per model and benchmark [95% Wilson interval]", "", table1(runs), ""]
    grouped: dict[str, list[dict[str, float]]] = {}
    pairs: dict[str, list[dict[str, dict[str, float]]]] = {}
    for run in runs:
        grouped.setdefault(run.variant, []).append(
            {b: group_mean(per) for b, per in scores[run.label].items()}
        )
        pairs.setdefault(run.variant, []).append(run_pairs(run.seed, scores[run.label], item_outcomes(run)))
    paired = paired_variants(pairs)
    t2_md, t2_csv = table2(grouped, paired)
    (out / "table2.csv").write_text(t2_csv)
    md += [
        "## Table 2: variants (group mean pass@1 %, mean ± sd over seeds)",
        "",
        t2_md,
        "",
        "CSV: [table2.csv](table2.csv)",
        "",
    ]
    if paired:
        md += [
            "Δ vs full: the variant minus full AGORA, paired on the same (seed, item) where "
            "item results exist, else on seeds; 95% interval and p from a paired bootstrap.",
            "",
            *variant_sentences(paired),
            "",
        ]
    path = out / "report.md"
    path.write_text("\n".join(md))
    return path
