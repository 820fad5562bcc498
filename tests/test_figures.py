"""The report's figures show what the store holds, readably, and hide nothing without saying so.

Two small runs (AGORA and its isolated control) are written through `Store` with the awkward
shapes a real three-step tiny run produces: two members on one base with identical anchors and
training losses, a member whose every solution hit the solve token cap, difficulties that differ
in the third decimal, a step that buffered nothing, an evaluation where every score is 0, an
audit where nothing is right, and a run that was stopped for over an hour between two steps.
`agora report` renders every figure; the checks read each figure's JSON sidecar, whose `axes`
part is read back from matplotlib after layout (ticks, legend, texts, every series' points).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agora_cli.config import config_from_dict, dump_config
from agora_cli.evaluation.report import build_report
from agora_cli.paths import RunPaths
from agora_cli.store import Store

pytestmark = pytest.mark.unit

MEMBERS = {"gemma": "google/gemma-3-270m-it", "smol-a": "smollm2-135m", "smol-b": "smollm2-135m"}
CAP = 160  # protocol.sampling.solve.max_tokens
THRESHOLD = 4  # protocol.buffer_threshold
STEP_S = 30.0  # every step's own duration
GAP_S = 5000.0  # the run stood stopped between step 1's commit and step 2's start
DIFFICULTY = [1.0, 1.005, 1.0125, 1.015, 1.0175]  # default ticks: 1.0000 1.0025 ... touching
BUFFERED = [2, 3, 0, 3, 2]  # step 2 kept nothing
# Anchors on the calibration split at every step: the two smol members alike throughout, everyone
# at 0 at step 1, high and low points in every corner (no room for a legend inside the panel).
ANCHORS = {
    0: {"gemma": 1.0, "smol-a": 0.875, "smol-b": 0.875, "@majority": 0.875},
    1: {"gemma": 0.0, "smol-a": 0.0, "smol-b": 0.0, "@majority": 0.0},
    2: {"gemma": 0.75, "smol-a": 0.625, "smol-b": 0.625, "@majority": 0.75},
    3: {"gemma": 0.25, "smol-a": 0.125, "smol-b": 0.125, "@majority": 0.125},
    4: {"gemma": 1.0, "smol-a": 0.875, "smol-b": 0.875, "@majority": 0.875},
}
LOSSES = {"gemma": [1.2, 1.24], "smol-a": [0.58, 0.66, 0.74], "smol-b": [0.58, 0.66, 0.74]}
STEP_AXES = {"step", "optimiser step"}  # axis labels of axes that count steps


def make_run(root: Path, mode: str) -> None:
    """One run directory: config, store and an `agora eval` taken after step 4, all scores 0."""
    paths = RunPaths(root).ensure()
    cfg = config_from_dict(
        {
            "name": root.name,
            "members": [{"name": m, "model": model} for m, model in MEMBERS.items()],
            "protocol": {
                "mode": mode,
                "buffer_threshold": THRESHOLD,
                "anchor_every": 1,
                "sampling": {"solve": {"temperature": 0.6, "top_p": 0.95, "max_tokens": CAP}},
            },
        }
    )
    paths.config.write_text(dump_config(cfg))
    t = 1_700_000_000.0
    with Store(paths.store) as s:
        buffer_ids: list[int] = []
        for step, d in enumerate(DIFFICULTY):
            if step == 2:
                t += GAP_S
            start, commit = t, t + STEP_S
            t = commit
            kept = 0
            for k in range(2):
                pid = s.execute(
                    "INSERT INTO problems(step, author, text, difficulty, created_at) VALUES (?,?,?,?,?)",
                    (step, "gemma", f"p{step}.{k}", d, start),
                ).lastrowid
                for m in MEMBERS:
                    # gemma always runs into the cap and gets half right at steps 0-2 (three points
                    # on one spot); the smol members write the same lengths and grades.
                    tokens = CAP if m == "gemma" else 60 + 10 * step + 5 * k
                    ok = k == 0 if m == "gemma" and step < 3 else (step + k) % 2 == 0
                    sid = s.execute(
                        "INSERT INTO solutions(problem_id, step, member, text, answer, elite_ids, "
                        "completion_tokens, correct, created_at) VALUES (?,?,?,?,?,?,?,?,?)",
                        (pid, step, m, f"sol {m}", "7", "[]", tokens, int(ok), start),
                    ).lastrowid
                    if kept < BUFFERED[step]:
                        buffer_ids.append(
                            s.execute(
                                "INSERT INTO buffer(step, solution_id, problem_id, member, created_at) "
                                "VALUES (?,?,?,?,?)",
                                (step, sid, pid, m, commit),
                            ).lastrowid
                        )
                        kept += 1
            s.execute(
                "INSERT INTO steps(step, started_at, committed_at, difficulty, next_difficulty, v_t, "
                "n_correct, n_solutions, n_problems, n_buffered) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (step, start, commit, d, d + 0.005, [0.5, 0.5, 0.0, 0.5, 1 / 3][step], 0, 6, 2, kept),
            )
            # The consensus audit: nothing approved was right, no probe solution was right.
            s.execute(
                "INSERT INTO audit(step, verifier, tp, fp, fn, tn) VALUES (?, '@consensus', 0, ?, 0, ?)",
                (step, 2 + step % 2, 2 - step % 2),
            )
            for member, score in ANCHORS.get(step, {}).items():
                s.execute(
                    "INSERT INTO anchors(step, member, benchmark, score, n, created_at) VALUES (?,?,?,?,?,?)",
                    (step, member, "gsm8k_dev", score, 8, commit),
                )
        rid = s.execute(
            "INSERT INTO rounds(step, status, buffer_ids, started_at) VALUES (?,?,?,?)",
            (1, "live", json.dumps(buffer_ids[:THRESHOLD]), t),
        ).lastrowid
        for m, losses in LOSSES.items():
            s.execute(
                "INSERT INTO adapters(member, version, round_id, path, status, metrics, created_at) "
                "VALUES (?,?,?,?,?,?,?)",
                (m, 1, rid, f"adapters/{m}/v1", "live", json.dumps({"losses": losses}), t),
            )
    evals = paths.evals / "after-step-4"
    evals.mkdir(parents=True, exist_ok=True)
    scores = {m: {"score": 0.0, "n": 10} for m in [*MEMBERS, "@majority"]}
    evals.joinpath("summary.json").write_text(
        json.dumps(
            {
                "scores": {"gsm8k": scores},
                "adapter_versions": {m: 1 for m in MEMBERS},
                "written_at": t + 60,
                "step": 4,
            }
        )
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report directory of an AGORA run and its isolated control."""
    root = tmp_path_factory.mktemp("figures")
    make_run(root / "tiny", "agora")
    make_run(root / "tiny-isolated", "isolated")
    return build_report([root / "tiny", root / "tiny-isolated"], root / "report").parent


def sidecars(out: Path) -> dict[str, dict[str, Any]]:
    """Every figure's sidecar by file name; the figures the check needs are all there."""
    found = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}
    assert {p.stem for p in out.glob("*.png")} == set(found)
    return found


def panel(data: dict[str, Any], xlabel: str) -> dict[str, Any]:
    """The one panel of a figure whose x label starts with `xlabel`."""
    (ax,) = [ax for ax in data["axes"] if ax["xlabel"].startswith(xlabel)]
    return ax


def panels(out: Path) -> list[tuple[str, dict[str, Any]]]:
    return [(name, ax) for name, data in sorted(sidecars(out).items()) for ax in data["axes"]]


def test_every_figure_is_rendered(report: Path) -> None:
    names = set(sidecars(report))
    per_run = {"fig1-anchor", "fig3-difficulty-length", "fig4-yield", "knowledge-flow", "training-loss"}
    per_run |= {"consensus-audit"}
    assert names == {f"{run}-{f}" for run in ("tiny", "tiny-isolated") for f in per_run} | {
        "fig5-groups",
        "fig6-agora-vs-isolated",
    }


def test_step_axes_have_whole_number_ticks(report: Path) -> None:
    checked = 0
    for name, ax in panels(report):
        for axis in ("x", "y"):
            if ax[f"{axis}label"] in STEP_AXES:  # the colorbar of Figure 3 counts steps on y
                ticks = ax[f"{axis}ticks"]
                assert ticks, (name, ax["title"])
                assert all(t == int(t) for t in ticks), (name, ax["title"], ticks)
                checked += 1
    assert checked == 11  # Figures 1, 3 (colorbar), 4, training loss and audit of both runs; 6


def test_tick_labels_are_readable(report: Path) -> None:
    for name, ax in panels(report):
        assert not ax["xticklabels_run_together"], (name, ax["title"], ax["xticklabels"])
    fig3 = panel(sidecars(report)["tiny-fig3-difficulty-length"], "difficulty")
    assert 2 <= len(fig3["xticks"]) <= 6


def _drawn_points(ax: dict[str, Any]) -> list[tuple[str, list[list[float]]]]:
    """Marks drawn with markers (lines without markers and bars are not points)."""
    return [(m["name"], m["px"]) for m in ax["marks"] if m["marker"] not in ("None", "", "bar") and m["px"]]


def test_no_series_is_hidden_behind_another(report: Path) -> None:
    """Every series keeps at least one point that no other series covers (within 3 px)."""
    for name, ax in panels(report):
        marks = _drawn_points(ax)
        for i, (series, pts) in enumerate(marks):
            others = [p for j, (_, ps) in enumerate(marks) if j != i for p in ps]
            free = [p for p in pts if all(abs(p[0] - q[0]) > 3 or abs(p[1] - q[1]) > 3 for q in others)]
            assert free, (name, ax["title"], series)


def test_no_legend_covers_a_point(report: Path) -> None:
    for name, ax in panels(report):
        if ax["legend_px"] is None:
            continue
        x0, y0, x1, y1 = ax["legend_px"]
        for series, pts in _drawn_points(ax):
            for x, y in pts:
                assert not (x0 - 2 <= x <= x1 + 2 and y0 - 2 <= y <= y1 + 2), (name, ax["title"], series)


def test_every_point_of_a_member_stays_visible(report: Path) -> None:
    """Figure 3's length panel: gemma's three steps at (cap, 0.5) are spread, not stacked."""
    ax = panel(sidecars(report)["tiny-fig3-difficulty-length"], "mean response length")
    points = [tuple(p) for _, ps in _drawn_points(ax) for p in ps]
    for p in points:
        assert sum(abs(p[0] - q[0]) <= 3 and abs(p[1] - q[1]) <= 3 for q in points) == 1, p


def test_every_legend_entry_is_drawn(report: Path) -> None:
    """A legend entry names a drawn series: by name, or by member (Figure 1's color entries,
    whose series are `anchor <member>` and `eval <benchmark> <member>`), or by marker kind."""
    kinds = {"anchor (calibration subset)": "o", "eval (full agora eval)": "*"}
    for name, ax in panels(report):
        drawn = [m for m in ax["marks"] if m["x"]]
        for entry in ax["legend"]:
            if entry in kinds:
                ok = any(m["marker"] == kinds[entry] for m in drawn)
            else:
                member = entry.split(" (")[0]
                ok = any(m["name"] == entry or m["name"].split(" ")[-1] == member for m in drawn)
            assert ok, (name, ax["title"], entry)


def test_identical_series_are_named_not_hidden(report: Path) -> None:
    figs = sidecars(report)
    loss = figs["tiny-training-loss"]
    assert "smol-a v1 = smol-b v1 (identical)" in loss["axes"][0]["legend"]
    assert any("smol-a v1 = smol-b v1" in n for n in loss["axes"][0]["notes"])
    assert len(loss["axes"][0]["legend"]) == len(_drawn_points(loss["axes"][0])) == 2
    assert loss["identical"] == [["smol-a v1", "smol-b v1"]]

    fig1 = figs["tiny-fig1-anchor"]
    anchor_ax = fig1["axes"][0]
    assert "smol-b (anchor identical to smol-a)" in anchor_ax["legend"]
    assert any("smol-a = smol-b" in n for n in anchor_ax["notes"])
    assert fig1["panels"][0]["identical"] == [["smol-a", "smol-b"]]
    # Offset sideways by a fraction of a step, so both lines show and each point stays at its step.
    offsets = fig1["panels"][0]["anchor_offsets"]
    assert offsets["smol-a"] != offsets["smol-b"] and all(abs(o) < 0.25 for o in offsets.values())

    audit = figs["tiny-consensus-audit"]["axes"][0]
    assert "solutions correct (identical to precision)" in audit["legend"]
    assert {m["name"] for m in audit["marks"] if m["x"]} == {
        "precision",
        "solutions correct (identical to precision)",
    }
    # Recall has no evidence at any step (no probe solution was right): said, not drawn empty.
    assert "recall" not in audit["legend"]
    assert any("recall" in n for n in audit["notes"])


def test_zero_values_are_labelled(report: Path) -> None:
    """Every bar of height 0 carries a "0" label at its place (Figure 5: every score is 0;
    Figure 4: step 2 buffered nothing)."""
    labelled = 0
    for name, ax in panels(report):
        for mark in ax["marks"]:
            if mark["kind"] != "bars":
                continue
            for x, y in zip(mark["x"], mark["y"], strict=True):
                if y == 0:
                    assert any(t["text"] == "0" and abs(t["x"] - x) < 1e-6 for t in ax["texts"]), (name, x)
                    labelled += 1
    assert labelled >= 2 * 4 + 2  # Figure 5: 2 runs x 4 bars; Figure 4: one step per run


def test_evaluations_sit_on_the_anchor_axes(report: Path) -> None:
    fig1 = sidecars(report)["tiny-fig1-anchor"]
    (ax,) = fig1["axes"]  # one panel: the gsm8k evaluation on the gsm8k_dev anchor axes
    stars = [m for m in ax["marks"] if m["marker"] == "*"]
    anchors = [m for m in ax["marks"] if m["marker"] == "o"]
    assert len(stars) == 4 and len(anchors) == 4
    lo, hi = ax["xlim"]
    assert all(lo < x < hi for m in stars + anchors for x in m["x"])
    assert all(round(x) == 4 and abs(x - 4) < 0.5 for m in stars for x in m["x"])  # at the step evaluated
    assert ax["xticks"] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert [p["benchmark"] for p in fig1["panels"]] == ["gsm8k_dev"]
    assert fig1["panels"][0]["evals"] == ["gsm8k"]


def test_fill_times_count_step_time_only(report: Path) -> None:
    fig4 = sidecars(report)["tiny-fig4-yield"]
    # 2 + 3 rows reach 4 after step 1 (60 s); 5 + 0 + 3 reach 8 after step 3 (60 s more) although
    # the run stood stopped for 5000 s in between.
    assert fig4["cumulative"] == [2, 5, 5, 8, 10]
    assert fig4["fill_times_s"] == [2 * STEP_S, 2 * STEP_S]
    assert fig4["elapsed_s"] == [STEP_S * (k + 1) for k in range(len(DIFFICULTY))]
    assert fig4["step_s"] == [STEP_S] * len(DIFFICULTY)


def test_truncation_cap_is_marked(report: Path) -> None:
    fig3 = sidecars(report)["tiny-fig3-difficulty-length"]
    ax = panel(fig3, "mean response length")
    (cap,) = [m for m in ax["marks"] if m["kind"] == "line" and set(m["x"]) == {CAP}]
    assert cap["name"] == f"cap {CAP} tokens (solve max_tokens)" and cap["name"] in ax["legend"]
    assert ax["xlim"][0] < CAP < ax["xlim"][1]
    assert fig3["token_caps"] == {m: CAP for m in MEMBERS}


def test_consensus_approval_is_called_so(report: Path) -> None:
    figs = sidecars(report)
    left = panel(figs["tiny-fig3-difficulty-length"], "difficulty")
    assert "consensus approval" in left["ylabel"] and "pass@1" not in left["ylabel"]
    md = (report / "report.md").read_text()
    assert "consensus approval rate V_t" in md
    assert "consensus pass@1" not in md
