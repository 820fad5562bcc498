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
from agora_cli.evaluation.comparisons import (
    METHOD,
    RunValues,
    compare_by_seed,
    comparison_sentence,
    delta_cell,
    group_mean,
    paired_variants,
    run_pairs,
    variant_sentences,
)
from agora_cli.paths import RunPaths
from agora_cli.stats import (
    PairedBinary,
    SeedComparison,
    interval_text,
    p_text,
    paired_binary,
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
    entries = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


# --------------------------------------------------------------------------- scores


def anchor_curve(store: Store) -> plots.AnchorCurve:
    """The members' mean anchor score per anchored step ('@majority' left out), with the pooled
    counts (`k` right of `n` graded, over members) for its interval."""
    rows = report_store.anchor_curve_rows(store)
    return {
        "step": [step for step, _, _, _ in rows],
        "score": [score for _, score, _, _ in rows],
        "k": [k for _, _, k, _ in rows],
        "n": [n for _, _, _, n in rows],
    }


def token_caps(run: RunInfo) -> dict[str, int]:
    """{member: solve max_tokens} from the run's config: the protocol's solve sampling, or the
    member's own sampling where it sets one (the length at which a solution is cut off)."""
    proto = ((run.config.get("protocol") or {}).get("sampling") or {}).get("solve") or {}
    caps: dict[str, int] = {}
    for m in run.config.get("members") or []:
        if not isinstance(m, dict) or "name" not in m:
            continue
        cap = (m.get("sampling") or {}).get("max_tokens") or proto.get("max_tokens")
        if isinstance(cap, int):
            caps[m["name"]] = cap
    return caps


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
        versions_key = json.dumps(summary.get("adapter_versions") or {}, sort_keys=True)
        key = (name, step, versions_key)
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


def _target_rule(config: dict[str, Any]) -> str:
    """Which V_target rule steered Eq. 1 (docs/protocol.md), for Figure 3's caption."""
    fixed = (config.get("protocol") or {}).get("v_target")
    if fixed is not None:
        return f"V_target was fixed at {fixed} (`protocol.v_target`): d_t rises while V_t stays above it."
    return (
        "V_target followed the moving average of recent V_t plus a margin (Eq. 1 read literally): "
        "d_t drifts down unless V_t keeps rising."
    )


def _fig1_caption(run: RunInfo, points: dict[str, Any], without: list[str]) -> str:
    ev = run.config.get("evaluation") or {}
    every = (run.config.get("protocol") or {}).get("anchor_every", "?")
    text = (
        f"Lines: the external anchor, pass@1 on the calibration subset "
        f"({ev.get('calibration_size', '?')} items of {ev.get('calibration', '?')}_dev, a split "
        f"held out from the training data and from every evaluation, every {every} step(s)); "
        "error bars are 95% Wilson intervals. Stars: full `agora eval` results, drawn on the "
        "anchor axes of their benchmark's calibration split at the run's last committed step "
        "when the evaluation started, whatever adapter versions it evaluated (Table 1 lists "
        "them); same color per member, `@majority` in black. Lines or stars that would sit on "
        "one spot are shifted sideways by a fraction of a step, and identical lines are named "
        "in the legend."
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
    scores: dict[str, dict[str, float]] = {}
    ordered = sorted(run.evals.values(), key=lambda s: s.get("written_at", 0))
    for summary in ordered:  # later evaluations overwrite earlier ones
        for bench, per in (summary.get("scores") or {}).items():
            scores[bench] = {m: v["score"] for m, v in per.items()}
    if scores:
        return scores
    with Store(RunPaths(run.root).store, readonly=True) as store:
        for r in report_store.latest_anchors(store):
            scores.setdefault(f"{r.benchmark} (anchor)", {})[r.member] = r.score
    return scores


def final_ns(run: RunInfo) -> dict[str, dict[str, int]]:
    """{benchmark: {member: n}} matching `final_scores` (for the intervals of Figure 5)."""
    ns: dict[str, dict[str, int]] = {}
    for summary in sorted(run.evals.values(), key=lambda s: s.get("written_at", 0)):
        for bench, per in (summary.get("scores") or {}).items():
            ns[bench] = {m: int(v.get("n") or 0) for m, v in per.items()}
    if ns:
        return ns
    with Store(RunPaths(run.root).store, readonly=True) as store:
        for r in report_store.latest_anchors(store):
            ns.setdefault(f"{r.benchmark} (anchor)", {})[r.member] = int(r.n or 0)
    return ns


def item_outcomes(run: RunInfo) -> dict[str, dict[str, dict[str, bool]]]:
    """{benchmark: {member: {item id: correct}}} of the run's latest evaluation per benchmark,
    from its results.jsonl (only rows of the models that evaluation scored). Empty when the run
    has no item-level results (then comparisons pair on seeds only)."""
    from agora_cli.evaluation.evaluate import read_results

    outcomes: dict[str, dict[str, dict[str, bool]]] = {}
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
                outcomes[bench] = per
    return outcomes


# --------------------------------------------------------------------------- tables


def contamination_md(run: RunInfo) -> list[str]:
    """The run's contamination check, per evaluation: the items sharing a 13-gram with one of
    its problems ([] when no evaluation recorded the check)."""
    from agora_cli.evaluation.contamination import contamination_lines

    out = []
    for name, summary in sorted(run.evals.items()):
        c = summary.get("contamination")
        if not isinstance(c, dict):
            continue
        lines = contamination_lines(c.get("items") or {}, int(c.get("problems_checked") or 0))
        if lines:
            out += [
                f"- `{name}`: {line}; these items are scored, but the run may have seen them."
                for line in lines
            ]
        else:
            checked = c.get("problems_checked", 0)
            out.append(f"- `{name}`: no item shares a 13-gram with the run's {checked} problem(s).")
    return ["### Contamination check", "", *out, ""] if out else []


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
    paired: dict[str, dict[str, SeedComparison]] | None = None,
) -> tuple[str, str]:
    """Table 2 shape: {variant: [one {benchmark: score} per seed]} -> (Markdown, CSV).

    Cells are mean ± sample standard deviation over seeds, in percent (the mean alone from one
    seed: no spread to show); 'full' comes first. With `paired` ({variant: {benchmark: variant -
    full by seed}}, see `comparisons.paired_variants`), each benchmark gets a `Δ vs full` column:
    the mean per-seed difference in points ± its sd over seeds, and the seed-level p, or `n
    seeds: no test` where too few seeds pair for the test to reach 0.05.
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
        + " | ".join([*benches, *(f"{b} Δ vs full by seed (± sd), p" for b in delta_cols)])
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
            *[f"{b}_{k}" for b in delta_cols for k in ("delta", "delta_sd", "p", "seeds", "per_seed")],
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
            sd = statistics.stdev(xs) if len(xs) > 1 else None  # one seed has no spread
            cells.append(_fmt(mean, sd))
            csv_cells += [f"{mean:.6f}", "" if sd is None else f"{sd:.6f}"]
        for b in delta_cols:
            r = paired.get(variant, {}).get(b)
            if r is None or not r.n:
                cells.append("–")
                csv_cells += ["", "", "", "", ""]
                continue
            cells.append(delta_cell(r))
            csv_cells += [
                f"{r.mean:.6f}",
                "" if r.n < 2 else f"{r.sd:.6f}",
                "" if r.p is None else f"{r.p:.6f}",
                str(r.n),
                ";".join(f"{s}:{d:.6f}" for s, d in zip(r.seeds, r.diffs, strict=True)),
            ]
        md += f"| {variant} | {len(per_seed)} | " + " | ".join(cells) + " |\n"
        w.writerow([variant, len(per_seed), *csv_cells])
    return md, buf.getvalue()


def mode_comparison(runs: list[RunInfo]) -> tuple[str, list[str]]:
    """AGORA against the isolated control: seed-level, and item-level within one seed.

    Returns (a Markdown table of exact McNemar tests per benchmark and member, `@majority`
    included, for each pair of runs: item-level, within one seed; the sentences: first AGORA -
    isolated per seed with the seed-level test, then one per McNemar row). McNemar pairs runs by
    seed when both modes have that seed, else every AGORA run with every isolated run."""
    agora = [r for r in runs if r.mode == "agora" and r.variant == "full"]
    isolated = [r for r in runs if r.mode == "isolated"]
    by_seed = compare_by_seed(
        [run_pairs(r.seed, final_scores(r), item_outcomes(r)) for r in isolated],
        [run_pairs(r.seed, final_scores(r), item_outcomes(r)) for r in agora],
    )
    words = [comparison_sentence("AGORA minus isolated", bench, c) for bench, c in by_seed.items()]
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
            "_No item-level comparison: both runs need `agora eval` results on the same "
            "benchmark items (results.jsonl)._\n",
            words,
        )
    md = (
        "Item-level, within one seed: each row compares one AGORA run with one isolated run on "
        "the same items (exact McNemar). It says whether these two runs differ, not whether the "
        "methods do: run-to-run variance is only in the seed-level comparison above.\n\n"
        "| AGORA run | isolated run | benchmark | member | AGORA pass@1 [95% CI] | "
        "isolated pass@1 [95% CI] | only AGORA right | only isolated right | McNemar p |\n"
        "|---|---|---|---|---:|---:|---:|---:|---:|\n"
    )
    for a_label, i_label, bench, m, r in rows:
        md += (
            f"| {a_label} | {i_label} | {bench} | {m} | {rate_text(r.k_a, r.n)} | {rate_text(r.k_b, r.n)}"
            f" | {r.only_a} | {r.only_b} | {p_text(r.p)} |\n"
        )
        words.append(
            f"- {m} on {bench} (`{a_label}` vs `{i_label}`, {r.n} shared items): "
            f"{100 * (r.k_a - r.k_b) / r.n:+.1f} points, {significance_text(r.p)} "
            "(exact McNemar; item-level, within one seed)."
        )
    return md, words


def group_of(run: RunInfo) -> str:
    """A run's group of models: its members' model sources, sorted (seed and name aside)."""
    models = sorted(str(m.get("model")) for m in run.config.get("members", []) if isinstance(m, dict))
    return ", ".join(models) or "?"


def group_comparison(runs: list[RunInfo]) -> list[str]:
    """Full-AGORA runs of different groups of models (e.g. homogeneous against mixed), each group
    against the first, paired by seed: per-seed differences and the seed-level test."""
    groups: dict[str, list[RunInfo]] = {}
    for r in runs:
        if r.mode == "agora" and r.variant == "full":
            groups.setdefault(group_of(r), []).append(r)
    if len(groups) < 2:
        return []
    values = {
        g: [run_pairs(r.seed, final_scores(r), item_outcomes(r)) for r in rs] for g, rs in groups.items()
    }
    names = {g: f"{rs[0].config.get('name', '?')} ({g})" for g, rs in groups.items()}
    first, *rest = list(groups)
    lines = []
    for g in rest:
        for bench, c in compare_by_seed(values[first], values[g]).items():
            lines.append(comparison_sentence(f"`{names[g]}` minus `{names[first]}`", bench, c))
    return lines


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
    curves: dict[str, list[plots.AnchorCurve]] = {}
    for run in runs:
        slug = _slug(run.label)
        threshold = (run.config.get("protocol") or {}).get("buffer_threshold")
        with Store(RunPaths(run.root).store, readonly=True) as store:
            points, without = eval_points(run)
            plots.fig_scores_vs_step(
                store, out / f"{slug}-fig1-anchor.png", run.label, evals=points, evals_without_step=without
            )
            plots.fig_difficulty_length(
                store, out / f"{slug}-fig3-difficulty-length.png", run.label, token_caps(run)
            )
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
            *contamination_md(run),
            "### Figure 3: difficulty and response length against performance",
            "",
            f"![Figure 3, {run.label}]({slug}-fig3-difficulty-length.png)",
            "",
            "Left: each committed step's difficulty d_t against its consensus approval rate V_t, "
            "the share of the step's solutions that passed unanimous verification (approval, not "
            "correctness against gold). Right: per member and step, mean completion tokens against "
            "the share judged correct; the dashed line is the solve token cap, where a completion "
            "is cut off. " + _target_rule(run.config),
            "",
            "### Figure 4: high-quality yield per step and time to fill the buffer",
            "",
            f"![Figure 4, {run.label}]({slug}-fig4-yield.png)",
            "",
            "Time here is step time: the sum of the committed steps' own durations, so time the "
            "run stood stopped between steps is not counted.",
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
        md += ["## AGORA against isolated evolution, paired by seed", "", f"Seed level: {METHOD}.", ""]
        md += cmp_words + ([""] if cmp_words else [])
        md += [cmp_md, ""]
    group_words = group_comparison(runs)
    if group_words:
        md += ["## Groups of models compared, paired by seed", "", f"Seed level: {METHOD}.", ""]
        md += [*group_words, ""]
    md += ["## Table 1: pass@1 (%) per model and benchmark [95% Wilson interval]", "", table1(runs), ""]
    grouped: dict[str, list[dict[str, float]]] = {}
    pairs: dict[str, list[RunValues]] = {}
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
            f"Δ vs full: the variant minus full AGORA, {METHOD}.",
            "",
            *variant_sentences(paired),
            "",
        ]
    path = out / "report.md"
    path.write_text("\n".join(md))
    return path
