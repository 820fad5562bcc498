"""pass@1 evaluation and the external anchor against a scripted fake OpenAI server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agora_cli.client import ClientPool, MemberLimits
from agora_cli.config import Sampling, config_from_dict
from agora_cli.datasets import (
    Item,
    calibration_set,
    load_benchmark,
    load_seed_pool,
    subset,
)
from agora_cli.endpoint import Endpoint
from agora_cli.evaluation.anchor import run_anchor
from agora_cli.evaluation.evaluate import evaluate, read_results
from agora_cli.evaluation.grading import Grader
from agora_cli.protocol.majority import MAJORITY, plurality
from agora_cli.protocol.prompts import Prompts
from tests.fakes.openai_server import FakeOpenAI, Reply, Request, scripted

MEMBERS = ["alice", "bob", "carol"]
# Which items (by position in the evaluated subset) each member answers correctly. Wrong answers
# are gold + 1 for everyone, so the majority is right exactly when two of three are right.
RIGHT = {"alice": {0, 1, 2, 3}, "bob": {0, 1, 4}, "carol": {0, 5}}


def make_responder(items, right=RIGHT):
    """Answer the evaluate role: correct on `right[model]`, else gold + 1, always in \\boxed{}."""
    index = {it.problem: (i, it.answer) for i, it in enumerate(items)}

    def solve(req: Request) -> str | Reply:
        problem = req.user.split("Problem:", 1)[1].rsplit("Solution:", 1)[0].strip()
        i, gold = index[problem]
        ans = gold if i in right[req.model] else str(int(gold) + 1)
        return f"Let me think step by step. The total is {ans}.\n\\boxed{{{ans}}}"

    return scripted({"evaluate": solve})


def make_pool(url: str, members=MEMBERS) -> ClientPool:
    return ClientPool(
        resolve=lambda m: Endpoint(url, model=m),
        limits={m: MemberLimits(max_concurrency=4, timeout_s=30) for m in members},
    )


@pytest.fixture(scope="module")
def grader():
    with Grader(workers=2, timeout_s=10) as g:
        yield g


@pytest.mark.unit
def test_subsets_are_fixed_and_seeded() -> None:
    items = load_benchmark("gsm8k")
    a, b = subset(items, 6), subset(items, 6)
    assert [it.id for it in a] == [it.id for it in b]
    assert len(a) == 6 and len({it.id for it in a}) == 6
    assert [it.id for it in a] != [it.id for it in items[:6]]  # seeded sample, not the head
    assert subset(items, None) == items


@pytest.mark.unit
def test_calibration_set_is_a_fixed_held_out_slice_of_gsm8k_train() -> None:
    cal = calibration_set("gsm8k", 50, "gsm8k_train")
    assert len(cal) == 50
    assert cal == calibration_set("gsm8k", 50, "gsm8k_train")  # fixed
    assert {it.benchmark for it in cal} == {"gsm8k_dev"}
    assert all(6973 <= int(it.id.split("/")[1]) <= 7472 for it in cal)  # the last 500 train rows
    seed_ids = {it.id for it in load_seed_pool("gsm8k_train")}
    assert len(seed_ids) == 7473 - 500 and not seed_ids & {it.id for it in cal}


@pytest.mark.unit
def test_majority_answer_groups_equivalents_and_breaks_ties_by_member_order() -> None:
    assert plurality(["18", "1,000", "1000"]) == "1,000"
    assert plurality(["7", "8"]) == "7"
    assert plurality(["8", "7"]) == "8"
    assert plurality([None, "3", None]) == "3"
    assert plurality([None, None]) is None
    assert plurality(["2", "3", "3", "2"]) == "2"


@pytest.mark.integration
async def test_evaluate_exact_accuracy_per_member_and_majority(tmp_path: Path, grader) -> None:
    items = subset(load_benchmark("gsm8k"), 6)
    with FakeOpenAI(make_responder(items)) as fake:
        pool = make_pool(fake.url)
        report = await evaluate(
            pool, Prompts(), MEMBERS, {"gsm8k": items}, Sampling(max_tokens=64), grader, tmp_path
        )
        await pool.aclose()
        assert len(fake.requests_for("evaluate")) == 18
        sent = fake.requests_for("evaluate")[0].body
        assert sent["temperature"] == 0.6 and sent["top_p"] == 0.95  # Eq. 5 defaults

    s = report.scores["gsm8k"]
    assert s["alice"] == (4 / 6, 6)
    assert s["bob"] == (3 / 6, 6)
    assert s["carol"] == (2 / 6, 6)
    assert s[MAJORITY] == (2 / 6, 6)  # items 0 and 1 have two or more right answers

    rows = read_results(tmp_path / "results.jsonl")
    assert len(rows) == 18 + 6
    by = {(r.member, r.item_id): r for r in rows}
    first = items[0]
    assert by[("alice", first.id)].answer == first.answer and by[("alice", first.id)].correct
    assert by[("alice", first.id)].gold == first.answer
    assert "\\boxed" in by[("alice", first.id)].reply
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["scores"]["gsm8k"]["bob"] == {
        "score": 0.5,
        "n": 6,
        "k": 3,
        "ci95": [0.187616, 0.812384],
    }  # Wilson 95% of 3/6


@pytest.mark.integration
async def test_evaluate_resumes_without_reasking(tmp_path: Path, grader) -> None:
    items = subset(load_benchmark("gsm8k"), 6)
    with FakeOpenAI(make_responder(items)) as fake:
        pool = make_pool(fake.url)
        await evaluate(pool, Prompts(), MEMBERS, {"gsm8k": items[:3]}, Sampling(), grader, tmp_path)
        assert len(fake.requests) == 9
        fake.clear()
        report = await evaluate(pool, Prompts(), MEMBERS, {"gsm8k": items}, Sampling(), grader, tmp_path)
        await pool.aclose()
        # Only the three new items were asked, for each member.
        asked = {(r.model, r.user) for r in fake.requests}
        assert len(fake.requests) == 9 == len(asked)
    assert report.asked == 9 and report.reused == 9
    assert report.scores["gsm8k"]["alice"] == (4 / 6, 6)
    rows = read_results(tmp_path / "results.jsonl")
    keys = [r.key for r in rows]
    assert len(keys) == len(set(keys)) == 18 + 6


@pytest.mark.integration
async def test_two_member_majority_tie_goes_to_first_member(tmp_path: Path, grader) -> None:
    items = subset(load_benchmark("gsm8k"), 6)
    with FakeOpenAI(make_responder(items)) as fake:
        pool = make_pool(fake.url, ["bob", "alice"])
        report = await evaluate(
            pool, Prompts(), ["bob", "alice"], {"gsm8k": items}, Sampling(), grader, tmp_path
        )
        await pool.aclose()
    # Disagreements are ties, resolved to bob's answer: bob is right on 0, 1, 4.
    assert report.scores["gsm8k"][MAJORITY] == (3 / 6, 6)


def _cfg(url: str) -> object:
    return config_from_dict(
        {
            "name": "anchor-test",
            "backends": {"fake": {"kind": "openai", "base_url": url}},
            "members": [{"name": m, "model": m, "backend": "fake"} for m in MEMBERS],
            "ablations": {"lora": False},
            "evaluation": {"calibration": "gsm8k", "calibration_size": 6, "grade_workers": 2},
        }
    )


@pytest.mark.integration
async def test_run_anchor_scores_members_and_majority_on_calibration_set() -> None:
    with FakeOpenAI(lambda r: "") as fake:
        cfg = _cfg(fake.url)
        items = calibration_set("gsm8k", 6, cfg.protocol.seed_pool)
        fake.responder = make_responder(items)
        pool = make_pool(fake.url)
        scores = await run_anchor(pool, cfg, Prompts(), step=5)
        await pool.aclose()
        asked = {r.user.split("Problem:", 1)[1].rsplit("Solution:", 1)[0].strip() for r in fake.requests}
    assert asked == {it.problem for it in items}
    assert scores == {"alice": (4 / 6, 6), "bob": (3 / 6, 6), "carol": (2 / 6, 6), MAJORITY: (2 / 6, 6)}


@pytest.mark.integration
async def test_anchor_member_whose_requests_all_failed_has_no_score() -> None:
    """Every calibration request of bob fails: bob is missing from the anchor (and so is
    `@majority`, which needs every member), never scored 0.0 over nothing."""
    with FakeOpenAI(lambda r: "") as fake:
        cfg = _cfg(fake.url)
        items = calibration_set("gsm8k", 6, cfg.protocol.seed_pool)
        good = make_responder(items)
        fake.responder = lambda req: (
            Reply(status=400, text="bad adapter") if req.model == "bob" else good(req)
        )
        pool = make_pool(fake.url)
        scores = await run_anchor(pool, cfg, Prompts(), step=5)
        await pool.aclose()
    assert scores == {"alice": (4 / 6, 6), "carol": (2 / 6, 6)}


@pytest.mark.integration
async def test_majority_and_members_are_graded_by_one_rule(tmp_path: Path, grader) -> None:
    """Replies whose final answers are spelled unlike the gold (`12\\,345`, `1{,}000`, `10^{3}`) or
    that correct themselves: each member's verdict and `@majority`'s come from the same rule, so
    the majority is right exactly when the members holding its answer are."""
    items = [
        Item("gsm8k", "thin", "How many? (thin space)", "12345"),
        Item("gsm8k", "fix", "How many? (a correction)", "7"),
        Item("gsm8k", "mixed", "How many? (mixed forms)", "1000"),
    ]
    replies = {
        "thin": dict.fromkeys(MEMBERS, "Adding up gives \\boxed{12\\,345}"),
        "fix": dict.fromkeys(MEMBERS, "\\boxed{9}\nLet me check: 3 + 4 is 7, not 9.\nFinal answer: 7"),
        "mixed": {"alice": "\\boxed{1{,}000}", "bob": "So \\boxed{10^{3}}.", "carol": "\\boxed{999}"},
    }

    def solve(req: Request) -> str:
        item = next(it for it in items if it.problem in req.user)
        return replies[item.id][req.model]

    with FakeOpenAI(scripted({"evaluate": solve})) as fake:
        pool = make_pool(fake.url)
        await evaluate(pool, Prompts(), MEMBERS, {"gsm8k": items}, Sampling(), grader, tmp_path)
        await pool.aclose()
    rows = {(r.member, r.item_id): r for r in read_results(tmp_path / "results.jsonl")}
    verdicts = {(m, i): rows[(m, i)].correct for m in [*MEMBERS, MAJORITY] for i in replies}
    assert verdicts == {
        **{(m, i): True for m in [*MEMBERS, MAJORITY] for i in replies},
        ("carol", "mixed"): False,
    }
    assert rows[("alice", "fix")].answer == "7"  # the final answer, not the first box
    assert rows[(MAJORITY, "mixed")].answer == "1000"  # alice's `1{,}000` and bob's `10^{3}` are one answer


@pytest.mark.integration
async def test_echoed_prompt_is_not_graded_as_an_answer(tmp_path: Path, grader) -> None:
    """A base model that repeats the prompt must not score with the prompt's `\\boxed{42}`."""
    item = Item("gsm8k", "q42", "Ann has 6 bags of 7 apples. How many apples?", "42")
    # A prompt whose format example is itself a gradable answer (as prompts/evaluate.jinja once was).
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "evaluate.jinja").write_text(
        "{% block system %}[agora:role=evaluate]\nSolve it. End with e.g. \\boxed{42}."
        "{% endblock %}{% block user %}Problem: {{ problem }}\nSolution:{% endblock %}"
    )
    prompts = Prompts(tmp_path / "prompts")
    assert "\\boxed{42}" in prompts.render("evaluate", problem=item.problem)[0]["content"]

    def echo(req: Request) -> str:
        return req.system + "\n\n" + req.user + ("\nShe has 42 apples." if req.model == "b" else "")

    with FakeOpenAI(scripted({"evaluate": echo})) as fake:
        pool = make_pool(fake.url, ["a", "b"])
        report = await evaluate(
            pool, prompts, ["a", "b"], {"gsm8k": [item]}, Sampling(), grader, tmp_path / "out"
        )
        await pool.aclose()
    rows = {r.member: r for r in read_results(tmp_path / "out" / "results.jsonl")}
    assert rows["a"].answer is None and not rows["a"].correct
    assert "\\boxed{42}" in rows["a"].reply  # the raw reply is kept as it came
    assert rows["b"].answer == "42" and rows["b"].correct  # its own answer still counts
    assert report.scores["gsm8k"]["a"] == (0.0, 1)


@pytest.mark.integration
def test_run_evaluation_uses_live_or_chosen_adapter_versions(tmp_path: Path) -> None:
    from agora_cli.errors import EvaluationError
    from agora_cli.evaluation.evaluate import run_evaluation
    from agora_cli.paths import RunPaths
    from agora_cli.store import Store

    run = RunPaths(tmp_path / "run").ensure()
    with Store(run.store) as s:
        for member, version, status in [("alice", 1, "retired"), ("alice", 2, "live"), ("bob", 1, "failed")]:
            s.execute(
                "INSERT INTO adapters(member, version, path, status, created_at) VALUES (?, ?, ?, ?, 0)",
                (member, version, "x", status),
            )
            run.adapter_dir(member, version).mkdir(parents=True)
        for step in (0, 1):  # the summaries record the last committed step with the versions
            s.execute(
                "INSERT INTO steps(step, started_at, committed_at, difficulty) VALUES (?, 0, 1, 1.0)", (step,)
            )
    items = subset(load_benchmark("gsm8k"), 6)
    with FakeOpenAI(make_responder(items)) as fake:
        cfg = _cfg(fake.url)
        common = {"run_dir": run.root, "limit": 6, "benchmarks": ["gsm8k"]}
        live = run_evaluation(cfg, **common, pool=make_pool(fake.url))
        assert live.versions == {"alice": 2, "bob": 0, "carol": 0}
        chosen = run_evaluation(
            cfg, **common, members=["alice"], versions={"alice": 1}, greedy=True, pool=make_pool(fake.url)
        )
        assert chosen.versions == {"alice": 1}
        with pytest.raises(EvaluationError, match="no adapter v7"):
            run_evaluation(cfg, **common, versions={"bob": 7}, pool=make_pool(fake.url))
    rows = read_results(run.evals / "sampled" / "results.jsonl")
    assert {r.adapter_version for r in rows if r.member == "alice"} == {2}
    assert {r.adapter_version for r in rows if r.member == "bob"} == {0}
    greedy_rows = read_results(run.evals / "greedy" / "results.jsonl")
    assert {(r.member, r.adapter_version) for r in greedy_rows} == {("alice", 1)}
    summaries = {d: json.loads((run.evals / d / "summary.json").read_text()) for d in ("sampled", "greedy")}
    assert summaries["sampled"]["step"] == summaries["greedy"]["step"] == 1
    assert summaries["greedy"]["adapter_versions"] == {"alice": 1}
