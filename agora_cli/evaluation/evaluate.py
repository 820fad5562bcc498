"""pass@1 evaluation: one chain-of-thought sample per problem (Eq. 5), per member and `@majority`.

`evaluate` asks every (member, item) pair that is not yet in the results file, grades each reply
with the one grader (`protocol.answers.grade`; off the event loop, in the grader's workers), and
appends one JSON line per graded item to `<out>/results.jsonl` as soon as it is graded. An
interrupted evaluation therefore resumes without re-asking or re-grading anything: a row's key is
(member, benchmark, item id, model name), so results of another adapter version never count.

`@majority` is the ensemble's plurality answer (`protocol.majority.plurality`), graded like any
reply. Asking, grading and scoring live in `scoring.py`, shared with the external anchor.

`agora eval --with-elite RUN` scores every member twice on the same items: bare, and with RUN's
final elite history H_t quoted in the prompt as the run's solve prompt quotes it (the paper's
evaluation appears to keep in-context learning). Items whose text appears in H_t are
left out of both arms, and the two arms are compared item by item (exact McNemar).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agora_cli.client import ClientPool
from agora_cli.config import Config, Sampling
from agora_cli.datasets import Item
from agora_cli.errors import EvaluationError, EvaluationUsageError
from agora_cli.evaluation.grading import Grader
from agora_cli.evaluation.scoring import (
    MAJORITY,
    ItemResult,
    accuracy,
    answer_items,
    greedy_sampling,
    majority_rows,
)
from agora_cli.events import NULL_BUS, EventBus
from agora_cli.protocol.prompts import Prompts
from agora_cli.serving import serving_pool
from agora_cli.stats import PairedBinary, paired_binary, successes, wilson
from agora_cli.training.round_store import live_versions

# --------------------------------------------------------------------------- the results file


def read_results(path: Path) -> list[ItemResult]:
    """Rows of a results file; a torn last line (killed writer) is skipped."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rows.append(ItemResult(**json.loads(line)))
        except (json.JSONDecodeError, TypeError):
            continue
    return rows


class _Appender:
    """Appends one JSON line per result and flushes it, so a kill loses at most the line in flight."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        # A killed writer can leave a torn last line; start ours on a fresh line.
        if path.exists() and path.stat().st_size and not path.read_bytes().endswith(b"\n"):
            with path.open("a", encoding="utf-8") as f:
                f.write("\n")
        self._f = path.open("a", encoding="utf-8", buffering=1)

    def __call__(self, r: ItemResult) -> None:
        if r.error is None:  # failed requests are asked again on the next run
            self._f.write(json.dumps(asdict(r), ensure_ascii=False) + "\n")
            self._f.flush()

    def close(self) -> None:
        self._f.close()


# --------------------------------------------------------------------------- one evaluation


def score_entry(score: float, n: int) -> dict[str, Any]:
    """One summary.json score: pass@1, n, k and its 95% Wilson interval."""
    k = successes(score, n)
    lo, hi = wilson(k, n)
    return {"score": score, "n": n, "k": k, "ci95": [round(lo, 6), round(hi, 6)]}


@dataclass
class EvalReport:
    """What `evaluate` did: scores per benchmark and member, plus bookkeeping."""

    out_dir: Path
    scores: dict[str, dict[str, tuple[float, int]]]
    asked: int
    reused: int
    failed: int
    models: dict[str, str]
    versions: dict[str, int]
    # {benchmark: item ids left out because they are the run's calibration items}
    removed: dict[str, list[str]] = field(default_factory=dict)
    # {benchmark: {item id: run problem ids}}: items sharing a 13-gram with a problem of the run
    # (scored, not removed; contamination.py), and how many problems were checked
    contaminated: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    problems_checked: int = 0
    rows: list[ItemResult] = field(default_factory=list, repr=False)  # what the scores count
    # `--with-elite`: the same members and items scored with H_t in the prompt, the paired
    # comparison {benchmark: {member: bare vs with H_t}}, and the items whose text is in H_t.
    elite: EvalReport | None = None
    paired: dict[str, dict[str, PairedBinary]] = field(default_factory=dict)
    elite_removed: dict[str, list[str]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "scores": {
                b: {m: score_entry(s, n) for m, (s, n) in per.items()} for b, per in self.scores.items()
            },
            "models": self.models,
            "adapter_versions": self.versions,
            "asked": self.asked,
            "reused": self.reused,
            "failed": self.failed,
        }


async def evaluate(
    pool: ClientPool,
    prompts: Prompts,
    members: list[str],
    items: dict[str, list[Item]],
    sampling: Sampling,
    grader: Grader,
    out_dir: Path,
    *,
    versions: dict[str, int] | None = None,
    meta: dict[str, Any] | None = None,
    bus: EventBus = NULL_BUS,
    examples: list[dict[str, str | None]] | None = None,
) -> EvalReport:
    """Evaluate `members` on `items` ({benchmark: items}), resuming from `out_dir/results.jsonl`.

    `examples` go into every prompt as in-context examples (`--with-elite`: H_t); a directory
    holds the results of one prompt, so the caller gives each set of examples its own `out_dir`.

    Writes `results.jsonl` (one line per graded item, members and `@majority`) and `summary.json`.
    Raises EvaluationError after writing what it could when some requests failed after retries.
    """
    if not members:
        raise EvaluationError("no members to evaluate; check --members")
    versions = {m: (versions or {}).get(m, 0) for m in members}
    models = {m: pool.resolve(m).model for m in members}
    path = out_dir / "results.jsonl"
    previous = read_results(path)
    done = {r.key for r in previous}
    all_items = [it for b in items for it in items[b]]
    jobs = [(m, it) for it in all_items for m in members if (m, it.benchmark, it.id, models[m]) not in done]
    # Progress per (member, benchmark): an evaluation takes minutes and must never look stuck.
    totals = Counter((m, it.benchmark) for m, it in jobs)
    answered: Counter[tuple[str, str]] = Counter()
    bus.emit(
        "phase_started",
        phase="evaluate",
        step=None,
        n=len(jobs),
        totals=[{"member": m, "benchmark": b, "total": n} for (m, b), n in totals.items()],
    )
    t0 = time.perf_counter()
    appender = _Appender(path)

    def graded(r: ItemResult) -> None:
        appender(r)
        answered[(r.member, r.benchmark)] += 1
        bus.emit(
            "eval_progress",
            member=r.member,
            benchmark=r.benchmark,
            done=answered[(r.member, r.benchmark)],
            total=totals[(r.member, r.benchmark)],
        )

    try:
        fresh = await answer_items(
            pool,
            prompts,
            sampling,
            grader,
            jobs,
            model_of=models.__getitem__,
            version_of=versions.__getitem__,
            on_result=graded,
            examples=examples,
        )
        current = {
            (m, it.benchmark, it.id, models[m]) for m, it in ((m, it) for it in all_items for m in members)
        }
        rows = [r for r in previous + fresh if r.key in current and r.error is None]
        if len(members) > 1:
            maj_model = "+".join(models[m] for m in members)
            have = {r.key for r in previous if r.member == MAJORITY}
            todo = [it for it in all_items if (MAJORITY, it.benchmark, it.id, maj_model) not in have]
            new_maj = await asyncio.get_running_loop().run_in_executor(
                None, majority_rows, rows, members, todo, grader
            )
            for r in new_maj:
                appender(r)
            maj_keys = {(MAJORITY, it.benchmark, it.id, maj_model) for it in all_items}
            rows += [r for r in previous + new_maj if r.member == MAJORITY and r.key in maj_keys]
    finally:
        appender.close()
    failed = [r for r in fresh if r.error]
    scores = accuracy(rows)
    for b, per in scores.items():
        for m, (s, n) in per.items():
            bus.emit("validation_score", step=None, member=m, benchmark=b, score=s, n=n)
    bus.emit(
        "phase_finished", phase="evaluate", step=None, n=len(jobs), wall_s=round(time.perf_counter() - t0, 3)
    )
    report = EvalReport(
        out_dir,
        scores,
        len(jobs),
        len(all_items) * len(members) - len(jobs),
        len(failed),
        models,
        versions,
        rows=rows,
    )
    summary = {**(meta or {}), **report.summary(), "written_at": time.time()}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    # summary.json is the latest evaluation in this directory; history.jsonl keeps every one, so
    # re-running `agora eval` into the same directory after later steps (it reuses the items of
    # unchanged adapters) adds a point to Figure 1 instead of replacing the last.
    with (out_dir / "history.jsonl").open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(summary, ensure_ascii=False) + "\n")
    if failed:
        example = failed[0]
        raise EvaluationError(
            f"{len(failed)} of {len(jobs)} requests failed after retries (e.g. {example.member} on "
            f"{example.benchmark} {example.item_id}: {example.error}); results so far are in "
            f"{path}; re-run the same command to ask only the missing items"
        )
    return report


# --------------------------------------------------------------------------- `--with-elite`


@dataclass(frozen=True)
class EliteContext:
    """A run's final elite history H_t, as the `examples` of the evaluate prompt."""

    run_dir: Path
    step: int | None  # the run's last committed step: H_t is the one after it
    solution_ids: list[int]
    examples: list[dict[str, str | None]]

    @property
    def fingerprint(self) -> str:
        """Names the results directory: one H_t, one directory (rows of two never mix)."""
        key = json.dumps([str(self.run_dir.resolve()), self.solution_ids, self.examples])
        return hashlib.sha256(key.encode()).hexdigest()[:8]


def final_elite(cfg: Config, run_dir: Path) -> EliteContext:
    """RUN's H_t after its last committed step, cut and rendered exactly as the next step's solve
    prompt would show it: `elite_shots` of the strategy in force, `few_shot` honouring the
    `elite_icl` and `explanation` switches."""
    from agora_cli import anchor_store
    from agora_cli import steps as db
    from agora_cli.paths import RunPaths
    from agora_cli.protocol.solve import few_shot
    from agora_cli.protocol.surprise import elite_shots, step_strategy
    from agora_cli.store import Store

    path = RunPaths(run_dir).store
    if not path.exists():
        raise EvaluationUsageError(
            f"--with-elite {run_dir}: no run store at {path}; give the directory "
            "of a run that has committed at least one step"
        )
    if not cfg.ablations.elite_icl:
        raise EvaluationError(
            f"--with-elite {run_dir}: the config has ablations.elite_icl off, so its solvers never "
            "see H_t; evaluate without --with-elite, or with the config the run used"
        )
    with Store(path, readonly=True) as store:
        k = elite_shots(step_strategy(cfg, anchor_store.anchor_history(store)), cfg.protocol)
        elite = db.elite_examples(store)[:k]
        step = store.last_committed_step()
    if not elite:
        raise EvaluationError(
            f"--with-elite {run_dir}: the run's elite history H_t is empty (no solution has won a "
            "quality vote yet); run more steps or evaluate without --with-elite"
        )
    return EliteContext(
        Path(run_dir), step if step >= 0 else None, [e.solution_id for e in elite], few_shot(cfg, elite)
    )


def without_elite_text(
    items: list[Item], examples: list[dict[str, str | None]]
) -> tuple[list[Item], list[Item]]:
    """(items kept, items removed): an item is removed when its normalised problem text occurs
    anywhere in an elite example (problem, solution or explanation). Elite problems were written by
    the run's generators, so none should; a model can still copy a seed or a benchmark problem."""
    from agora_cli.datasets import normalize_text

    blob = "\n".join(normalize_text(" ".join(v or "" for v in ex.values())) for ex in examples)
    kept: list[Item] = []
    removed: list[Item] = []
    for it in items:
        text = normalize_text(it.problem)
        (removed if text and text in blob else kept).append(it)
    return kept, removed


def compare_arms(bare: EvalReport, elite: EvalReport) -> dict[str, dict[str, PairedBinary]]:
    """{benchmark: {member: McNemar of bare (a) against with-H_t (b) on the items both scored}}."""

    def by_item(rows: list[ItemResult]) -> dict[tuple[str, str], dict[str, bool]]:
        outcomes: dict[tuple[str, str], dict[str, bool]] = {}
        for r in rows:
            outcomes.setdefault((r.benchmark, r.member), {})[r.item_id] = r.correct
        return outcomes

    a, b = by_item(bare.rows), by_item(elite.rows)
    tests: dict[str, dict[str, PairedBinary]] = {}
    for key in a.keys() & b.keys():
        tests.setdefault(key[0], {})[key[1]] = paired_binary(a[key], b[key])
    return tests


def comparison_json(elite_ctx: EliteContext, report: EvalReport) -> dict[str, Any]:
    """comparison.json of a `--with-elite` evaluation."""
    return {
        "elite_run": str(elite_ctx.run_dir),
        "elite_step": elite_ctx.step,
        "elite_solution_ids": elite_ctx.solution_ids,
        "bare_results": str(report.out_dir / "results.jsonl"),
        "removed_elite_overlap": report.elite_removed,
        "paired": {
            b: {
                m: {
                    **asdict(pb),
                    "significant": pb.significant,
                    "test": "exact McNemar",
                    "bare": score_entry(pb.k_a / pb.n if pb.n else 0.0, pb.n),
                    "with_elite": score_entry(pb.k_b / pb.n if pb.n else 0.0, pb.n),
                }
                for m, pb in per.items()
            }
            for b, per in report.paired.items()
        },
    }


# --------------------------------------------------------------------------- `agora eval`


def run_versions(run_dir: Path, members: list[str]) -> dict[str, int]:
    """Each member's live adapter version in the run (0 = base model; no run store = all base)."""
    from agora_cli.paths import RunPaths
    from agora_cli.store import Store

    path = RunPaths(run_dir).store
    if not path.exists():
        return {m: 0 for m in members}
    with Store(path, readonly=True) as store:
        return live_versions(store, members)


def last_step(run_dir: Path) -> int | None:
    """The run's last committed step, or None when it has no store or no committed step yet.

    `agora eval` records it in summary.json so `agora report` can draw the evaluation on
    Figure 1 at the step it was taken, on the anchors' axis (the anchor of step t is taken
    while step t runs; an evaluation after step t commits is drawn at t too).
    """
    from agora_cli.paths import RunPaths
    from agora_cli.store import Store

    path = RunPaths(run_dir).store
    if not path.exists():
        return None
    with Store(path, readonly=True) as store:
        step = store.last_committed_step()
    return step if step >= 0 else None


def check_versions(run_dir: Path, versions: dict[str, int]) -> None:
    """Every chosen adapter version must exist on disk (base = 0 always does)."""
    from agora_cli.paths import RunPaths

    paths = RunPaths(run_dir)
    for m, v in versions.items():
        if v and not paths.adapter_dir(m, v).exists():
            raise EvaluationUsageError(
                f"member {m!r} has no adapter v{v} at {paths.adapter_dir(m, v)}; list the run's "
                f"adapters with `agora status {run_dir}` or use {m}=base"
            )


def run_evaluation(
    cfg: Config,
    *,
    run_dir: Path | None = None,
    benchmarks: list[str] | None = None,
    limit: int | None = None,
    members: list[str] | None = None,
    versions: dict[str, int] | None = None,
    greedy: bool | None = None,
    out: Path | None = None,
    bus: EventBus = NULL_BUS,
    pool: ClientPool | None = None,
    with_elite: Path | None = None,
) -> EvalReport:
    """`agora eval`: serve the members (live adapter, a chosen version, or base) and evaluate.

    `versions` overrides the run's live adapters per member ({member: N}, 0 = base). With `pool`
    given, that pool is used as is (the caller serves the members) and adapters are not switched.
    Results go to `out` (default `<run>/evals/<greedy|sampled>`); summary.json records the run's
    last committed step when the evaluation started (`step`, null before the first step), and
    history.jsonl gains the same summary, one line per finished evaluation (Figure 1's stars).

    Items sharing a word 13-gram with any problem in the run's store are flagged, not removed
    (`report.contaminated`, summary.json's `contamination`; see contamination.py).

    `with_elite` (a run directory): score the same items a second time with that run's final H_t
    in the prompt, into `<out>-with-elite-<fingerprint>`, and compare the arms item by item
    (`report.elite`, `report.paired`, and comparison.json there). Items whose text is in H_t are
    left out of both arms (`report.elite_removed`).
    """
    from agora_cli.datasets import calibration_set, subset, without_calibration
    from agora_cli.evaluation.contamination import NGRAM, contaminated, run_problems
    from agora_cli.evaluation.user_data import load_spec
    from agora_cli.paths import RunPaths

    run_dir = Path(run_dir) if run_dir else cfg.resolved_run_dir()
    names = [m.name for m in cfg.members]
    chosen = members or names
    unknown = [m for m in chosen if m not in names]
    if unknown:
        raise EvaluationUsageError(
            f"unknown member(s) {', '.join(unknown)}; the config has {', '.join(names)}"
        )
    extra = [m for m in (versions or {}) if m not in names]
    if extra:
        raise EvaluationUsageError(f"--adapter-version names unknown member(s) {', '.join(extra)}")
    # Read with the live versions, so the step and the adapters evaluated belong together.
    step = last_step(run_dir)
    vers = {**run_versions(run_dir, chosen), **{m: v for m, v in (versions or {}).items() if m in chosen}}
    check_versions(run_dir, vers)
    benches = benchmarks or list(cfg.evaluation.benchmarks)
    # Never score an item whose label steered the run (the anchor's calibration items): they are
    # removed, not refused, so the rest of the benchmark is still scored and every variant of a
    # grid is scored on the same items; summary.json lists what was removed. With the shipped
    # data nothing is (calibration comes from a held-out slice of GSM8K train).
    ev = cfg.evaluation
    calibration = calibration_set(ev.calibration, ev.calibration_size, cfg.protocol.seed_pool)
    items, removed = {}, {}
    for spec in benches:  # a shipped benchmark, or NAME=PATH (a user's own file, e.g. GPQA)
        b, loaded = load_spec(spec)
        items[b], gone = without_calibration(subset(loaded, limit), calibration)
        if gone:
            removed[b] = [it.id for it in gone]
    # Items the run may have seen: a generated problem sharing a 13-gram with one (flagged).
    problems = run_problems(run_dir)
    flagged = contaminated(items, problems)
    elite_ctx = final_elite(cfg, Path(with_elite)) if with_elite else None
    elite_removed: dict[str, list[str]] = {}
    if elite_ctx is not None:
        for b in items:
            items[b], gone = without_elite_text(items[b], elite_ctx.examples)
            if gone:
                elite_removed[b] = [it.id for it in gone]
    greedy = cfg.evaluation.greedy if greedy is None else greedy
    sampling = greedy_sampling(cfg.evaluation.sampling) if greedy else cfg.evaluation.sampling
    out = Path(out) if out else RunPaths(run_dir).evals / ("greedy" if greedy else "sampled")
    meta = {
        "config": cfg.name,
        "run_dir": str(run_dir),
        "step": step,
        "benchmarks": benches,
        "limit": limit,
        "members": chosen,
        "greedy": greedy,
        "sampling": sampling.model_dump(),
        "removed_calibration_items": removed,
        "contamination": {
            "check": f"word {NGRAM}-grams shared with the run's problems",
            "problems_checked": len(problems),
            "count": sum(len(per) for per in flagged.values()),
            "items": flagged,
        },
    }
    if elite_removed:
        meta["removed_elite_overlap"] = elite_removed
    prompts = Prompts(cfg.prompts_dir)
    if elite_ctx is not None and "examples" not in prompts.variables("evaluate"):
        raise EvaluationError(
            f"--with-elite: {prompts.path('evaluate')} does not use the `examples` variable, so "
            "H_t would not reach the prompt; add the examples loop of the shipped "
            "prompts/evaluate.jinja to it"
        )

    async def go(p: ClientPool) -> EvalReport:
        with Grader(cfg.evaluation.grade_workers, cfg.evaluation.grade_timeout_s) as grader:
            report = await evaluate(
                p, prompts, chosen, items, sampling, grader, out, versions=vers, meta=meta, bus=bus
            )
            if elite_ctx is not None:
                elite_out = out.with_name(f"{out.name}-with-elite-{elite_ctx.fingerprint}")
                elite_meta = {
                    **meta,
                    "with_elite": {
                        "run_dir": str(elite_ctx.run_dir),
                        "step": elite_ctx.step,
                        "solution_ids": elite_ctx.solution_ids,
                    },
                }
                report.elite = await evaluate(
                    p,
                    prompts,
                    chosen,
                    items,
                    sampling,
                    grader,
                    elite_out,
                    versions=vers,
                    meta=elite_meta,
                    bus=bus,
                    examples=elite_ctx.examples,
                )
        report.removed = removed
        report.contaminated, report.problems_checked = flagged, len(problems)
        if elite_ctx is not None and report.elite is not None:
            report.elite_removed = elite_removed
            report.paired = compare_arms(report, report.elite)
            (report.elite.out_dir / "comparison.json").write_text(
                json.dumps(comparison_json(elite_ctx, report), indent=2, ensure_ascii=False)
            )
        return report

    if pool is not None:
        return asyncio.run(go(pool))
    paths = RunPaths(run_dir)
    # Serve only the members being evaluated (a base model nobody asks need not be loaded).
    served = cfg.model_copy(update={"members": [m for m in cfg.members if m.name in chosen]})
    with serving_pool(served, paths, bus) as (srv, served_pool):
        for m, v in vers.items():
            if v and srv is None:
                raise EvaluationError(f"cannot load adapter v{v} for {m!r}: no serving backend")
            if v:  # make the chosen adapter version live for this evaluation
                srv.activate(m, paths.adapter_dir(m, v), v)

        async def with_pool() -> EvalReport:
            try:
                return await go(served_pool)
            finally:
                await served_pool.aclose()

        return asyncio.run(with_pool())
