"""`agora report` on synthetic but consistent run stores written through `Store`.

Each synthetic run is generated from a seeded RNG while the test keeps its own tallies of what it
wrote (anchor lines, yields, knowledge flow); the figures' JSON sidecars must equal those tallies.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import matplotlib.image as mpimg
import pytest
from typer.testing import CliRunner

from agora_cli.cli import app
from agora_cli.config import config_from_dict, dump_config
from agora_cli.evaluation.report import build_report
from agora_cli.paths import RunPaths
from agora_cli.stats import wilson
from agora_cli.store import Store

MEMBERS = ["a", "b", "c"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LOSSES = {"a": [2.0, 1.5, 1.25], "b": [1.8, 1.1], "c": [9.9]}


def make_run(
    root: Path,
    *,
    mode: str = "agora",
    seed: int = 0,
    steps: int = 6,
    ablations: dict | None = None,
    eval_scores: dict | None = None,
) -> dict:
    """Write a small consistent run; return the tallies a correct report must reproduce."""
    rng = random.Random(f"{mode}-{seed}")
    paths = RunPaths(root).ensure()
    cfg = config_from_dict(
        {
            "name": f"synthetic-{mode}-{seed}",
            "seed": seed,
            "members": [{"name": m, "model": f"model-{m}"} for m in MEMBERS],
            "protocol": {"mode": mode, "buffer_threshold": 6, "anchor_every": 2},
            "ablations": ablations or {},
        }
    )
    paths.config.write_text(dump_config(cfg))
    exp: dict = {
        "anchors": {},
        "buffered": [],
        "cumulative": [],
        "tokens": {},
        "elite": {(lm, t): 0 for lm in MEMBERS for t in MEMBERS},
        "training": {(lm, t): 0 for lm in MEMBERS for t in MEMBERS},
        "d": [],
        "v": [],
    }
    t0 = 1_700_000_000.0
    elite_ids: list[int] = []
    buffer_rows: list[tuple[int, str]] = []  # (buffer id, author)
    with Store(paths.store) as s:
        for step in range(steps):
            d, v = round(1.0 + 0.05 * step, 3), round(rng.random(), 3)
            start, commit = t0 + 10 * step, t0 + 10 * step + 8
            n_buf = 0
            tokens: dict[str, list[int]] = {m: [] for m in MEMBERS}
            correct: dict[str, list[int]] = {m: [] for m in MEMBERS}
            for k in range(2):
                pid = s.execute(
                    "INSERT INTO problems(step, author, text, difficulty, created_at) VALUES (?, ?, ?, ?, ?)",
                    (step, MEMBERS[k], f"p{step}.{k}", d, start),
                ).lastrowid
                for m in MEMBERS:
                    shown = rng.sample(elite_ids, min(len(elite_ids), 2))
                    ok = rng.random() < 0.6
                    toks = rng.randint(20, 200)
                    sid = s.execute(
                        "INSERT INTO solutions(problem_id, step, member, text, answer, elite_ids, "
                        "completion_tokens, correct, created_at) VALUES (?,?,?,?,?,?,?,?,?)",
                        (pid, step, m, f"sol {m}", "7", json.dumps(shown), toks, int(ok), start),
                    ).lastrowid
                    tokens[m].append(toks)
                    correct[m].append(int(ok))
                    for eid in shown:
                        teacher = s.scalar("SELECT member FROM elite WHERE id = ?", (eid,))
                        exp["elite"][(m, teacher)] += 1
                    for verifier in MEMBERS:
                        if verifier != m:
                            s.execute(
                                "INSERT INTO verdicts(solution_id, step, verifier, valid, "
                                "created_at) VALUES (?,?,?,?,?)",
                                (sid, step, verifier, int(ok), start),
                            )
                    if ok and rng.random() < 0.7:
                        bid = s.execute(
                            "INSERT INTO buffer(step, solution_id, problem_id, member, created_at) "
                            "VALUES (?,?,?,?,?)",
                            (step, sid, pid, m, commit),
                        ).lastrowid
                        buffer_rows.append((bid, m))
                        n_buf += 1
                        if rng.random() < 0.5:
                            elite_ids.append(
                                s.execute(
                                    "INSERT INTO elite(step, solution_id, member, score, created_at) "
                                    "VALUES (?,?,?,?,?)",
                                    (step, sid, m, rng.random(), commit),
                                ).lastrowid
                            )
            s.execute(
                "INSERT INTO steps(step, started_at, committed_at, difficulty, next_difficulty, v_t, "
                "n_problems, n_buffered) VALUES (?,?,?,?,?,?,?,?)",
                (step, start, commit, d, d + 0.01, v, 2, n_buf),
            )
            exp["d"].append(d)
            exp["v"].append(v)
            exp["buffered"].append(n_buf)
            exp["cumulative"].append(sum(exp["buffered"]))
            for m in MEMBERS:
                exp["tokens"].setdefault(m, []).append(
                    (sum(tokens[m]) / len(tokens[m]), sum(correct[m]) / len(correct[m]))
                )
            if step % 2 == 1:
                for m in [*MEMBERS, "@majority"]:
                    score = round(rng.random(), 3)
                    s.execute(
                        "INSERT INTO anchors(step, member, benchmark, score, n, created_at) "
                        "VALUES (?,?,?,?,?,?)",
                        (step, m, "gsm8k", score, 8, commit),
                    )
                    exp["anchors"].setdefault(m, []).append((step, score))
        # One training round on the first 6 buffer rows; a and b got adapters from it, c's failed.
        consumed = buffer_rows[:6]
        rid = s.execute(
            "INSERT INTO rounds(step, status, buffer_ids, started_at) VALUES (?,?,?,?)",
            (steps - 1, "live", json.dumps([b for b, _ in consumed]), t0),
        ).lastrowid
        for b, _ in consumed:
            s.execute("UPDATE buffer SET round_id = ? WHERE id = ?", (rid, b))
        for m, status in [("a", "live"), ("b", "live"), ("c", "failed")]:
            s.execute(
                "INSERT INTO adapters(member, version, round_id, path, status, metrics, created_at) "
                "VALUES (?,?,?,?,?,?,?)",
                (m, 1, rid, f"adapters/{m}/v1", status, json.dumps({"losses": LOSSES[m]}), t0),
            )
            if status == "failed":
                continue
            for _, author in consumed:
                exp["training"][(m, author)] += 1
        # A second round still training teaches nobody yet.
        rid2 = s.execute(
            "INSERT INTO rounds(step, status, buffer_ids, started_at) VALUES (?,?,?,?)",
            (steps - 1, "training", json.dumps([b for b, _ in buffer_rows[6:]]), t0),
        ).lastrowid
        s.execute(
            "INSERT INTO adapters(member, version, round_id, path, status, created_at) "
            "VALUES ('a', 2, ?, 'adapters/a/v2', 'training', ?)",
            (rid2, t0),
        )
    if eval_scores is not None:
        d = paths.evals / "sampled"
        d.mkdir(parents=True, exist_ok=True)
        d.joinpath("summary.json").write_text(
            json.dumps(
                {
                    "scores": {
                        b: {m: {"score": v, "n": 10} for m, v in per.items()}
                        for b, per in eval_scores.items()
                    },
                    "adapter_versions": {m: 1 for m in MEMBERS},
                    "written_at": 1.0,
                }
            )
        )
    return exp


def _sidecar(png: Path) -> dict:
    assert png.read_bytes()[:8] == PNG_MAGIC
    img = mpimg.imread(png)
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50
    return json.loads(png.with_suffix(".json").read_text())


@pytest.mark.unit
def test_report_figures_match_the_store(tmp_path: Path) -> None:
    run = tmp_path / "run-agora"
    exp = make_run(run)
    md_path = build_report([run])
    out = run / "report"
    assert md_path == out / "report.md"

    fig1 = _sidecar(out / "run-agora-fig1-anchor.png")
    for m, points in exp["anchors"].items():
        line = fig1["anchors"]["gsm8k"][m]
        assert (line["step"], line["score"]) == ([p[0] for p in points], [p[1] for p in points])
        # Error bars: the 95% Wilson interval of each anchor score over its 8 items.
        assert [[round(x, 9) for x in b] for b in zip(line["lo"], line["hi"], strict=True)] == [
            [round(x, 9) for x in wilson(round(p[1] * 8), 8)] for p in points
        ]
    assert fig1["evals"] == {} and fig1["evals_without_step"] == []

    fig3 = _sidecar(out / "run-agora-fig3-difficulty-length.png")
    assert fig3["difficulty"]["d"] == exp["d"] and fig3["difficulty"]["v_t"] == exp["v"]
    assert set(fig3["difficulty"]["v_lo"]) == {0.0}  # no n_solutions stored: no evidence drawn
    for m, per_step in exp["tokens"].items():
        got = list(zip(fig3["length"][m]["mean_tokens"], fig3["length"][m]["correct_rate"], strict=True))
        assert [(round(a, 6), round(b, 6)) for a, b in got] == [
            (round(a, 6), round(b, 6)) for a, b in per_step
        ]

    fig4 = _sidecar(out / "run-agora-fig4-yield.png")
    assert fig4["buffered"] == exp["buffered"]
    assert fig4["cumulative"] == exp["cumulative"]
    # Step time: each step took 8 s (started to committed); the 2 s between steps are not counted.
    assert fig4["elapsed_s"] == [8 * (k + 1) for k in range(6)]
    # Time for each successive 6 rows (the configured threshold) to accumulate.
    fills, last = [], 0
    for elapsed, total in zip(fig4["elapsed_s"], exp["cumulative"], strict=True):
        while total >= 6 * (len(fills) + 1):
            fills.append(elapsed - last)
            last = elapsed
    assert fig4["fill_times_s"] == fills and fills

    flow = _sidecar(out / "run-agora-knowledge-flow.png")
    assert flow["members"] == MEMBERS
    for i, learner in enumerate(MEMBERS):
        for j, teacher in enumerate(MEMBERS):
            assert flow["elite"][i][j] == exp["elite"][(learner, teacher)]
            assert flow["training"][i][j] == exp["training"][(learner, teacher)]
    assert sum(map(sum, flow["elite"])) > 0
    assert sum(flow["training"][2]) == 0  # c's adapter failed: it learned nothing by training

    loss = _sidecar(out / "run-agora-training-loss.png")
    assert loss["losses"] == {"a": {"v1": LOSSES["a"]}, "b": {"v1": LOSSES["b"]}}  # c's adapter failed

    md = md_path.read_text()
    pngs = sorted(p.name for p in out.glob("*.png"))
    linked = sorted(re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", md))
    assert pngs == linked and len(pngs) == 6


@pytest.mark.unit
def test_report_across_modes_and_variants(tmp_path: Path) -> None:
    runs = []
    for mode, seed, abl, ev in [
        ("agora", 0, {}, {"gsm8k": {"a": 0.4, "b": 0.6, "c": 0.5, "@majority": 0.7}}),
        ("agora", 1, {}, {"gsm8k": {"a": 0.5, "b": 0.7, "c": 0.6, "@majority": 0.7}}),
        ("isolated", 0, {}, None),
        ("agora", 0, {"fem": False}, {"gsm8k": {"a": 0.3, "b": 0.3, "c": 0.3}}),
    ]:
        d = tmp_path / f"{mode}-{seed}-{'no-fem' if abl else 'full'}"
        make_run(d, mode=mode, seed=seed, ablations=abl, eval_scores=ev)
        runs.append(d)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["report", *map(str, runs), "--out", str(out)])
    assert result.exit_code == 0, result.output
    md = (out / "report.md").read_text()
    linked = set(re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", md))
    assert linked == {p.name for p in out.glob("*.png")}
    assert "fig6-agora-vs-isolated.png" in linked

    fig6 = _sidecar(out / "fig6-agora-vs-isolated.png")
    with Store(runs[2] / "agora.sqlite", readonly=True) as s:
        iso = s.query(
            "SELECT step, AVG(score) FROM anchors WHERE member != '@majority' GROUP BY step ORDER BY step"
        )
    assert fig6["isolated"]["step"] == [r[0] for r in iso]
    assert [round(x, 9) for x in fig6["isolated"]["score"]] == [round(r[1], 9) for r in iso]
    assert fig6["agora"]["runs"] == 3

    # Those evaluations recorded no step (summaries from before agora did): counted, not drawn.
    fig1 = _sidecar(out / "agora-0-full-fig1-anchor.png")
    assert fig1["evals"] == {} and fig1["evals_without_step"] == ["sampled"]
    assert "Not drawn, no step recorded" in md and "`sampled`" in md

    fig5 = _sidecar(out / "fig5-groups.png")
    assert fig5["scores"]["agora-1-full"]["gsm8k"]["b"] == 0.7
    assert "gsm8k (anchor)" in fig5["scores"]["isolated-0-full"]

    # Table 2: full = mean over seeds of the member mean (0.5 and 0.6) -> 55.0 ± 7.1.
    assert "| full | 2 | 55.0 ± 7.1 |" in md
    assert "| no-fem | 1 | 30.0 |" in md  # one seed: no spread to show
    csv_text = (out / "table2.csv").read_text().splitlines()
    assert csv_text[0].startswith(
        "variant,seeds,gsm8k_mean,gsm8k_sd,gsm8k (anchor)_mean,gsm8k (anchor)_sd,gsm8k_delta,"
    )
    # No item results: no-fem is paired with full on seed 0 only (0.3 against 0.5): no test.
    assert (
        "`no-fem` against `full` on gsm8k: per-seed differences -20.0 (seed 0); "
        "mean -20.0 points; 1 seed: no test" in md
    )
    assert csv_text[1].startswith("full,2,0.550000,0.070711")
    # Table 1 lists every evaluated member with its adapter version.
    assert "| agora-0-full | b v1 | sampled | 60.0 [31.3, 83.2] |" in md  # 6/10, Wilson 95%


@pytest.mark.unit
def test_report_rejects_a_directory_without_a_store(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert "not a run directory" in result.output


@pytest.mark.integration
def test_report_on_a_run_written_by_the_loop(tmp_path: Path) -> None:
    """The loop's own writes (fake ensemble, anchors on) feed every figure consistently."""
    from agora_cli import runner
    from agora_cli.config import config_from_dict
    from tests.fakes.ensemble import config_dict, responder
    from tests.fakes.openai_server import FakeOpenAI

    run_dir = tmp_path / "looprun"
    with FakeOpenAI(responder()) as fake:
        data = config_dict(fake.url, run_dir, anchor_every=1)
        data["ablations"]["external_anchor"] = True
        data["evaluation"] = {"calibration_size": 2}
        runner.run(config_from_dict(data), steps=3)
    out = build_report([run_dir]).parent
    with Store(run_dir / "agora.sqlite", readonly=True) as s:
        anchors = s.query("SELECT step, member, score FROM anchors ORDER BY step")
        elite_pairs = [
            (r["member"], s.scalar("SELECT member FROM elite WHERE id = ?", (eid,)))
            for r in s.query("SELECT member, elite_ids FROM solutions")
            for eid in json.loads(r["elite_ids"])
        ]
        buffered = [s.scalar("SELECT COUNT(*) FROM buffer WHERE step = ?", (t,)) for t in range(3)]
    assert {r["step"] for r in anchors} == {0, 1, 2}
    fig1 = _sidecar(out / "looprun-fig1-anchor.png")
    for r in anchors:
        line = fig1["anchors"]["gsm8k_dev"][r["member"]]  # the held-out calibration split
        assert line["score"][line["step"].index(r["step"])] == r["score"]
    flow = _sidecar(out / "looprun-knowledge-flow.png")
    names = flow["members"]
    assert elite_pairs  # the elite history was shown from step 1 on
    for i, learner in enumerate(names):
        for j, teacher in enumerate(names):
            assert flow["elite"][i][j] == elite_pairs.count((learner, teacher))
    assert _sidecar(out / "looprun-fig4-yield.png")["buffered"] == buffered


def write_summary(
    run: Path,
    name: str,
    scores: dict,
    *,
    step: object = "absent",
    written_at: float = 1.0,
    versions: dict | None = None,
) -> None:
    """An `agora eval` summary.json; `step="absent"` writes one as agora did before it had `step`."""
    d = RunPaths(run).evals / name
    d.mkdir(parents=True, exist_ok=True)
    summary: dict = {
        "scores": {b: {m: {"score": v, "n": 10} for m, v in per.items()} for b, per in scores.items()},
        "adapter_versions": versions or {m: 0 for m in MEMBERS},
        "written_at": written_at,
    }
    if step != "absent":
        summary["step"] = step
    d.joinpath("summary.json").write_text(json.dumps(summary))


@pytest.mark.unit
def test_figure1_draws_evaluations_at_their_steps(tmp_path: Path, monkeypatch) -> None:
    from agora_cli.evaluation import plots

    run = tmp_path / "stepped"
    paths = RunPaths(run).ensure()
    paths.config.write_text(
        dump_config(
            config_from_dict(
                {
                    "name": "stepped",
                    "members": [{"name": m, "model": f"model-{m}"} for m in MEMBERS],
                    "protocol": {"anchor_every": 2},
                    "evaluation": {"calibration_size": 8},
                }
            )
        )
    )
    anchors = {2: {"a": 0.25, "b": 0.5, "@majority": 0.5}, 4: {"a": 0.5, "b": 0.75, "@majority": 0.75}}
    with Store(paths.store) as s:
        for step in range(5):
            s.execute(
                "INSERT INTO steps(step, started_at, committed_at, difficulty) VALUES (?, ?, ?, 1.0)",
                (step, 10.0 * step, 10.0 * step + 8),
            )
        for step, per in anchors.items():
            for m, score in per.items():
                s.execute(
                    "INSERT INTO anchors(step, member, benchmark, score, n, created_at) "
                    "VALUES (?, ?, 'gsm8k', ?, 8, 0)",
                    (step, m, score),
                )
    # Written out of step order (step 4's summary is older) and with a second benchmark the anchor
    # never measures, plus one summary from before agora recorded steps and one before step 0.
    write_summary(
        run,
        "step4",
        {"gsm8k": {"a": 0.6, "b": 0.7, "@majority": 0.8}, "math500": {"a": 0.1}},
        step=4,
        written_at=5.0,
        versions={"a": 2, "b": 1},
    )
    write_summary(
        run,
        "step2",
        {"gsm8k": {"a": 0.3, "b": 0.4, "@majority": 0.4}, "math500": {"a": 0.05}},
        step=2,
        written_at=9.0,
        versions={"a": 1, "b": 0},
    )
    write_summary(run, "old", {"gsm8k": {"a": 0.9, "b": 0.9}})
    write_summary(run, "base", {"gsm8k": {"a": 0.0, "b": 0.0}}, step=None)

    legends: list[list[str]] = []
    save = plots._save

    def keep_legends(fig, path, data):
        if path.name.endswith("fig1-anchor.png"):
            legends.extend([t.get_text() for t in ax.get_legend().get_texts()] for ax in fig.axes)
        return save(fig, path, data)

    monkeypatch.setattr(plots, "_save", keep_legends)
    md = build_report([run]).read_text()
    png = run / "report" / "stepped-fig1-anchor.png"
    fig1 = _sidecar(png)

    anchor_a = fig1["anchors"]["gsm8k"]["a"]
    assert (anchor_a["step"], anchor_a["score"]) == ([2, 4], [0.25, 0.5])
    lo, hi = zip(wilson(3, 10), wilson(6, 10), strict=True)
    assert fig1["evals"]["gsm8k"]["a"] == {
        "step": [2, 4],
        "score": [0.3, 0.6],
        "n": [10, 10],
        "eval": ["step2", "step4"],
        "adapter_version": [1, 2],
        "lo": list(lo),
        "hi": list(hi),
    }
    assert fig1["evals"]["gsm8k"]["@majority"]["score"] == [0.4, 0.8]
    assert fig1["evals"]["gsm8k"]["@majority"]["adapter_version"] == [None, None]
    assert fig1["evals"]["gsm8k"]["b"]["step"] == [2, 4]
    # A benchmark with evaluations only gets its own panel: two panels, each 8 in wide at 110 dpi
    # (6 in of plot, 2 in of legend beside it).
    assert fig1["evals"]["math500"] == {
        "a": {
            "step": [2, 4],
            "score": [0.05, 0.1],
            "n": [10, 10],
            "eval": ["step2", "step4"],
            "adapter_version": [1, 2],
            "lo": [0.0, wilson(1, 10)[0]],
            "hi": [wilson(0, 10)[1], wilson(1, 10)[1]],
        }
    }
    assert "math500" not in fig1["anchors"]
    assert mpimg.imread(png).shape[1] == 2 * 8 * 110
    # Summaries without a step are left out, and the report says which.
    assert fig1["evals_without_step"] == ["base", "old"]
    assert all(
        0.9 not in p["score"] and 0.0 not in p["score"]
        for per in fig1["evals"].values()
        for p in per.values()
    )
    assert "Not drawn, no step recorded" in md and "`base`, `old`" in md
    assert "Evaluations drawn: `step2`, `step4`." in md
    # One legend entry per member and per marker kind, not one per point; b's anchor line and the
    # majority's are the same (0.5, 0.75), which the legend says instead of hiding one.
    assert legends == [
        [
            "a",
            "b",
            "@majority (anchor identical to b)",
            "anchor (calibration subset)",
            "eval (full agora eval)",
        ],
        ["a", "eval (full agora eval)"],
    ]
