"""Each ablation switch turns off one mechanism, and only its own stored quantities change.

Compared first: the switches whose mechanisms are separable on this scripted ensemble. valid_vote
and random_qgen change which solutions count or which problems exist, and lora which model
answers, which every later quantity reads: they are compared at the end of this module, each on
its own quantities, on what is upstream of it, and (lora) on the steps run before an adapter is
live (training there is the stub worker's, no model).

In-process runs against the scripted fake server (tests/fakes/ensemble.py), anchored at every
step on 12 calibration items per member (36 pooled, above FEM's `min_n`): every member answers
all of them at the first anchor and none after, a clear drop, so FEM acts from step 1 and the
plateau rule turns the strategy 'elite' at step 3. LoRA is off in every run here, so these runs
also show that FEM and the strategy act without any adapter change (every member is re-scored at
every anchor)."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agora_cli import runner
from agora_cli.config import config_from_dict
from agora_cli.datasets import load_dev_split, load_seed_pool
from agora_cli.events import EventBus
from agora_cli.paths import RunPaths
from agora_cli.protocol.surprise import NO_ANCHOR_NOTE
from agora_cli.store import Store
from agora_cli.training import rounds
from tests.fakes.ensemble import config_dict, problem_of, responder
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.sglang_server import FakeSGLang

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

STEPS, ITEMS = 4, 12
SWITCHES = [
    "difficulty_control",
    "fem",
    "dynamic_strategy",
    "external_anchor",
    "quality_vote",
    "elite_icl",
    "explanation",
]


def _reply():  # noqa: ANN202
    """The ensemble script, with calibration answers right at each member's first anchor only."""
    gold = {it.problem: it.answer for it in load_dev_split("gsm8k")}
    base, asked = responder(), {}

    def reply(req):  # noqa: ANN001, ANN202
        if req.role != "evaluate":
            return base(req)
        asked[req.model] = asked.get(req.model, 0) + 1
        answer = next(a for q, a in gold.items() if q in req.user)
        return f"The answer is \\boxed{{{answer if asked[req.model] <= ITEMS else answer + '1'}}}"

    return reply


def _stored(run_dir: Path, events: list[dict]) -> dict[str, Any]:
    """The quantities each mechanism writes, per committed step."""
    with Store(RunPaths(run_dir).store, readonly=True) as store:
        rows = [dict(r) for r in store.query("SELECT * FROM steps ORDER BY step")]
        anchors = [
            (r["step"], r["member"], r["score"], r["n"])
            for r in store.query("SELECT * FROM anchors ORDER BY step, member")
        ]
        elite = sorted(
            (r["member"], round(r["score"], 6))
            for r in store.query("SELECT member, score FROM elite WHERE active = 1")
        )
        buffered = store.scalar("SELECT COUNT(*) FROM buffer")
        # elite examples in each step's solve prompts, and self-explanations written
        shown = [
            store.scalar(
                "SELECT COALESCE(SUM(json_array_length(elite_ids)), 0) FROM solutions WHERE step = ?", (t,)
            )
            for t in range(len(rows))
        ]
        explained = store.scalar("SELECT COUNT(*) FROM explanations")
        ratings = store.query(
            "SELECT member, mu FROM ratings WHERE id IN (SELECT MAX(id) FROM ratings GROUP BY member)"
        )
    return {
        "d": [(round(r["difficulty"], 9), round(r["next_difficulty"], 9)) for r in rows],
        "v": [(r["v_t"], r["v_target"]) for r in rows],
        "f_t": [r["f_t"] for r in rows],
        "strategy": [r["strategy"] for r in rows],
        "anchors": anchors,
        "elite": elite,
        "buffer": buffered,
        "shown": shown,
        "explained": explained,
        "ratings": sorted((r["member"], round(r["mu"], 6)) for r in ratings),
        "fem_events": [{k: v for k, v in e.items() if k != "t"} for e in events if e["kind"] == "fem"],
        "info": [r["info"] for r in rows],
    }


RUNS: dict[str, dict[str, Any]] = {}


def _run(tmp_path_factory: pytest.TempPathFactory, off: str | None) -> dict[str, Any]:
    """Run STEPS steps with switch `off` turned off (None: all on), once per test session."""
    key = off or "full"
    if key not in RUNS:
        run_dir = tmp_path_factory.mktemp(key) / "run"
        events: list[dict] = []
        with FakeOpenAI(_reply(), latency_s=0.0) as fake:
            data = config_dict(fake.url, run_dir, anchor_every=1)
            data["ablations"]["external_anchor"] = True
            if off:
                data["ablations"][off] = False
            data["evaluation"] = {"calibration_size": ITEMS, "benchmarks": ["gsm8k"]}
            runner.run(config_from_dict(data), run_dir=run_dir, steps=STEPS, bus=EventBus([events.append]))
        RUNS[key] = _stored(run_dir, events)
    return RUNS[key]


# What turning each switch off may change; everything else must be stored identically.
OWN = {
    "difficulty_control": {"d", "fem_events"},  # d stays d0: neither Eq. 1 nor FEM moves it
    "fem": {"d", "fem_events"},  # F_t is still computed and stored; d is Eq. 1's alone
    "dynamic_strategy": {"strategy", "elite"},  # 'elite' keeps plateau_elite_k entries in H_t
    # no anchors: F_t undefined, so FEM and the strategy have no signal (and the note says so)
    "external_anchor": {"anchors", "f_t", "d", "strategy", "elite", "fem_events", "info"},
    # no votes: no ratings, every correct solution buffered, H_t scored on verdicts
    "quality_vote": {"ratings", "buffer", "elite"},
    # solve prompts carry no examples, so no self-explanation is written for them either
    "elite_icl": {"shown", "explained"},
    "explanation": {"explained"},  # H_t entries write no self-explanation
}
QUANTITIES = {
    "d",
    "v",
    "f_t",
    "strategy",
    "anchors",
    "elite",
    "buffer",
    "ratings",
    "fem_events",
    "shown",
    "explained",
}


def test_the_full_run_has_fem_and_the_strategy_acting_without_lora(tmp_path_factory):
    full = _run(tmp_path_factory, None)
    assert full["f_t"][0] is None and full["f_t"][1] == pytest.approx(1.0, abs=1e-4)
    assert full["strategy"] == ["balanced", "balanced", "balanced", "elite"]
    # FEM lowered d at step 1, and said so: the event names the anchor means and n.
    (first, *_) = full["fem_events"]
    assert first["step"] == 1 and first["member"] is None and first["n"] == 3 * ITEMS
    assert (
        first["text"].startswith("FEM: d lowered by ") and "anchor mean 1.00 -> 0.00, n = 36" in first["text"]
    )
    d, d_next = full["d"][1]
    assert d_next == pytest.approx(first["d_to"]) and d_next < first["d_from"]


@pytest.mark.parametrize("switch", SWITCHES)
def test_turning_a_switch_off_changes_only_its_mechanism(tmp_path_factory, switch):
    full, off = _run(tmp_path_factory, None), _run(tmp_path_factory, switch)
    differ = {q for q in QUANTITIES if full[q] != off[q]}
    assert differ == OWN[switch] - {"info"}, {q: (full[q], off[q]) for q in differ}


def test_without_difficulty_control_d_stays_d0(tmp_path_factory):
    off = _run(tmp_path_factory, "difficulty_control")
    assert all(d == (1.0, 1.0) for d in off["d"])  # FEM does not move it either
    assert off["fem_events"] == []


def test_without_external_anchor_f_t_is_null_and_the_run_says_why(tmp_path_factory):
    off, no_fem = _run(tmp_path_factory, "external_anchor"), _run(tmp_path_factory, "fem")
    assert off["anchors"] == [] and off["f_t"] == [None] * STEPS
    assert off["strategy"] == ["balanced"] * STEPS
    assert off["d"] == no_fem["d"]  # Eq. 1 alone: no substitute F_t moved d
    assert all(NO_ANCHOR_NOTE in info for info in off["info"])


# --------------------------------------------------------------------------------------------
# valid_vote, random_qgen and lora. Their mechanisms decide which solutions count, which problems
# exist or which model answers, so the ratings, the buffer, V_t and d downstream legitimately move.
# Each test states instead: the mechanism's own stored quantities differ as described; everything
# upstream of it is stored identically at the first step where it acts; and (lora) no step row
# differs while no adapter is live. These runs use a script whose replies depend only on the
# request (its member and its problem), never on arrival order, so two runs store the same texts.

SCRIPT_MEMBERS = ["alpha", "beta", "gamma"]
STUB = Path(__file__).parent / "fakes" / "stub_worker.py"


def _script():  # noqa: ANN202
    """The ensemble's script (tests/fakes/ensemble.py) made order-free: the problem member m writes
    from seed item s (the seed-pool item its generate prompt shows) is Q<10000 (m + 1) + s>, so two
    of its requests in one step may arrive in either order and a retried one gets the same reply;
    beta leaves every odd problem unanswered (no final answer)."""
    pool = [(it.problem, int(it.id.rsplit("/", 1)[1])) for it in load_seed_pool()]
    base = responder()

    def member(req) -> str:  # noqa: ANN001 - "alpha" or, on SGLang, "alpha:<adapter>"
        return req.model.partition(":")[0]

    def generate(req) -> str:  # noqa: ANN001
        seed = next((i for text, i in pool if text in req.text), None)
        assert seed is not None, f"no seed-pool item in the generate request: {req.text[:200]}"
        n = 10000 * (SCRIPT_MEMBERS.index(member(req)) + 1) + seed
        return (
            f"Problem: Q{n} A farmer has {n + 11} apples, sells {n % 7 + 2} pears and buys "
            f"{3 * n + 5} plums at market number {n}. How many fruits are left?"
        )

    def solve(req) -> str:  # noqa: ANN001
        m, q = member(req), problem_of(req)
        if m == "beta" and q is not None and q % 2:
            # no number at all, so no final answer is read from it (digits spelled as letters)
            return f"I am {m}. For problem {''.join('abcdefghij'[int(c)] for c in str(q))}, I gave up."
        return f"I am {m}. For Q{q}, adding the numbers step by step gives \\boxed{{7}}"

    def reply(req):  # noqa: ANN001, ANN202
        if req.role == "generate":
            return generate(req)
        if req.role == "solve":
            return solve(req)
        return base(req)

    return reply


# Per table, what a row says, with ids replaced by what they point at and timings left out.
ROWS = {
    "problems": "SELECT step, slot, author, text, difficulty, seed_ids, status FROM problems",
    "solutions": (
        "SELECT s.step, p.text, s.member, s.text, s.answer, s.correct, s.adapter_version, "
        "json_array_length(s.elite_ids) FROM solutions s JOIN problems p ON p.id = s.problem_id"
    ),
    "verdicts": (
        "SELECT v.step, s.member, s.text, v.verifier, v.valid FROM verdicts v "
        "JOIN solutions s ON s.id = v.solution_id"
    ),
    "votes": (
        # which solution is shown first follows solution ids, i.e. arrival order: not compared
        "SELECT v.step, min(a.text, b.text), max(a.text, b.text), v.voter, w.text FROM votes v "
        "JOIN solutions a ON a.id = v.solution_a "
        "JOIN solutions b ON b.id = v.solution_b LEFT JOIN solutions w ON w.id = v.winner"
    ),
    # Ratings are replayed in vote-id (arrival) order; on this script every vote is alpha's
    # solution beating beta's (gamma's are rejected), so that order cannot move them.
    "ratings": "SELECT step, member, round(mu, 6), round(sigma, 6), vote_id IS NULL FROM ratings",
    "buffer": "SELECT b.step, b.member, s.text FROM buffer b JOIN solutions s ON s.id = b.solution_id",
    "explanations": "SELECT step, member, text FROM explanations",
    "elite": (
        "SELECT e.step, e.member, round(e.score, 6), e.active, s.text FROM elite e "
        "JOIN solutions s ON s.id = e.solution_id"
    ),
    "anchors": "SELECT step, member, benchmark, score, n, adapter_version FROM anchors",
    "steps": (
        "SELECT step, difficulty, next_difficulty, v_t, v_target, f_t, strategy, n_problems, "
        "n_dropped, n_solutions, n_correct, n_buffered, info FROM steps"
    ),
}
UNTIL = {table: f"SELECT * FROM ({sql}) WHERE step <= ?" for table, sql in ROWS.items()}


def _rows(store: Store, table: str, until: int) -> list[tuple]:
    """`table`'s rows of steps 0..until, as ROWS words them, in a fixed order."""
    return sorted((tuple(r) for r in store.query(UNTIL[table], (until,))), key=repr)


def _script_run(
    tmp_path_factory: pytest.TempPathFactory,
    key: str,
    steps: int,
    ablations: dict[str, bool],
    *,
    sglang: bool = False,
    on_event: Callable[[dict], None] | None = None,
    **protocol: Any,
) -> tuple[Path, list[dict]]:
    """A run of `steps` steps on the order-free script (three FakeSGLang servers, one per
    member's base, when `sglang`), with `ablations` set; once per test session per `key`."""
    if key in SCRIPT_RUNS:
        return SCRIPT_RUNS[key]
    run_dir = tmp_path_factory.mktemp(key) / "run"
    events: list[dict] = []
    reply = _script()
    with contextlib.ExitStack() as stack:
        if sglang:  # LoRA needs a backend that loads adapters
            urls = {m: stack.enter_context(FakeSGLang(m, responder=reply)).url for m in SCRIPT_MEMBERS}
            data = config_dict("http://127.0.0.1:9/v1", run_dir, **protocol)
            data["backends"] = {"gpu": {"kind": "sglang", "launch": False, "urls": urls}}
            for m in data["members"]:
                m["backend"] = "gpu"
        else:
            data = config_dict(stack.enter_context(FakeOpenAI(reply, latency_s=0.0)).url, run_dir, **protocol)
        data["ablations"].update(ablations)
        sinks = [events.append] + ([on_event] if on_event else [])
        runner.run(config_from_dict(data), run_dir=run_dir, steps=steps, bus=EventBus(sinks))
    SCRIPT_RUNS[key] = (run_dir, events)
    return SCRIPT_RUNS[key]


SCRIPT_RUNS: dict[str, tuple[Path, list[dict]]] = {}

SCRIPT_STEPS = 2


def _full(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every switch on but the anchor and LoRA (as in tests/fakes/ensemble.py); three problem
    slots a step, so a Q-Group of every member writes one each."""
    return _script_run(tmp_path_factory, "script-full", SCRIPT_STEPS, {}, problems_per_step=3)[0]


def _without(tmp_path_factory: pytest.TempPathFactory, switch: str) -> Path:
    return _script_run(
        tmp_path_factory, f"script-no-{switch}", SCRIPT_STEPS, {switch: False}, problems_per_step=3
    )[0]


def _open(run_dir: Path) -> Store:
    return Store(RunPaths(run_dir).store, readonly=True)


def test_without_valid_vote_every_answered_solution_counts_and_none_is_verified(tmp_path_factory):
    with _open(_full(tmp_path_factory)) as on, _open(_without(tmp_path_factory, "valid_vote")) as off:
        # (a) no verification at all, and `correct` is exactly "has an answer" at every step
        assert off.scalar("SELECT COUNT(*) FROM verdicts") == 0 < on.scalar("SELECT COUNT(*) FROM verdicts")
        answered = "SELECT correct, answer IS NOT NULL AND error IS NULL FROM solutions WHERE step = ?"
        for t in range(SCRIPT_STEPS):
            got = [tuple(r) for r in off.query(answered, (t,))]
            assert got and all(c == a for c, a in got), (t, got)
            assert {a for _, a in got} == {0, 1}  # beta's unanswered solutions count as wrong
            # with the vote, gamma's answered (and rejected) solutions do not count
            assert any(c == 0 and a == 1 for c, a in (tuple(r) for r in on.query(answered, (t,))))
        # (b) upstream of the verdicts at step 0: the same problems and the same solution texts
        assert _rows(on, "problems", 0) == _rows(off, "problems", 0)
        texts = "SELECT member, text, answer FROM solutions WHERE step = 0"
        assert sorted(map(tuple, on.query(texts))) == sorted(map(tuple, off.query(texts)))


def _plans(store: Store) -> list[dict]:
    return [json.loads(r["info"]) for r in store.query("SELECT info FROM steps ORDER BY step")]


def test_without_random_qgen_every_member_writes_problems_each_step(tmp_path_factory):
    with _open(_full(tmp_path_factory)) as on, _open(_without(tmp_path_factory, "random_qgen")) as off:
        # (a) the Q-Group: all three members each step, against a random pair of them
        authors = "SELECT DISTINCT author FROM problems WHERE step = ? AND status = 'ok'"
        for t, (p_on, p_off) in enumerate(zip(_plans(on), _plans(off), strict=True)):
            assert p_off["generators"] == SCRIPT_MEMBERS
            assert sorted(r[0] for r in off.query(authors, (t,))) == SCRIPT_MEMBERS
            assert len(set(p_on["generators"])) == 2 and set(p_on["generators"]) < set(SCRIPT_MEMBERS)
            assert {r[0] for r in on.query(authors, (t,))} == set(p_on["generators"])
        # (b) upstream of the Q-Group at step 0: the same seed-pool draw per slot, the same d_0
        p_on, p_off = _plans(on)[0], _plans(off)[0]
        assert [s["seed_ids"] for s in p_on["slots"]] == [s["seed_ids"] for s in p_off["slots"]]
        seeds = "SELECT slot, seed_ids, difficulty FROM problems WHERE step = 0 ORDER BY slot"
        assert list(map(tuple, on.query(seeds))) == list(map(tuple, off.query(seeds)))
        assert on.scalar("SELECT difficulty FROM steps WHERE step = 0") == off.scalar(
            "SELECT difficulty FROM steps WHERE step = 0"
        )


LORA_STEPS = 3


def test_without_lora_nothing_is_trained_and_nothing_else_differs_until_an_adapter_is_live(
    tmp_path_factory, monkeypatch
):
    """Both runs on SGLang fakes. With LoRA on, the stub worker (no model) trains the first round
    but holds it in flight until the last step is committed (a gate file), so every step here
    runs on the base models and only the round's own rows may differ."""
    gate = tmp_path_factory.mktemp("gate") / "open"

    def command(spec: Path, training: Any) -> list[str]:  # noqa: ARG001 - the real worker's signature
        return [sys.executable, str(STUB), str(spec), f"wait:{gate}"]

    def open_gate(e: dict) -> None:
        if e["kind"] == "step_committed" and e["step"] == LORA_STEPS - 1:
            gate.touch()

    monkeypatch.setattr(rounds, "worker_command", command)
    proto = {"problems_per_step": 3, "buffer_threshold": 1}
    on_dir, on_events = _script_run(
        tmp_path_factory, "lora-on", LORA_STEPS, {"lora": True}, sglang=True, on_event=open_gate, **proto
    )
    off_dir, off_events = _script_run(tmp_path_factory, "lora-off", LORA_STEPS, {}, sglang=True, **proto)
    kinds_on = [e["kind"] for e in on_events]
    training = ("training_", "adapter_")
    with _open(on_dir) as on, _open(off_dir) as off:
        # (a) the run that trains has a live round and an adapter per member; without LoRA none
        first = on.query("SELECT * FROM rounds ORDER BY id")[0]
        assert first["status"] == "live"
        live = "SELECT member, version FROM adapters WHERE status = 'live' ORDER BY member"
        assert [tuple(r) for r in on.query(live)] == [(m, 1) for m in SCRIPT_MEMBERS]
        assert {"training_started", "training_finished", "adapter_live"} <= set(kinds_on)
        assert off.scalar("SELECT COUNT(*) FROM rounds") == 0 == off.scalar("SELECT COUNT(*) FROM adapters")
        assert not [e for e in off_events if e["kind"].startswith(training)]
        assert off.scalar("SELECT COUNT(*) FROM buffer WHERE round_id IS NOT NULL") == 0
        # (b) up to the step the first round was started after, every stored row is the same
        assert first["step"] < LORA_STEPS - 1  # steps ran while the round was in flight
        for table in ROWS:
            assert _rows(on, table, first["step"]) == _rows(off, table, first["step"]), table
        # (c) no adapter was live at any step (each committed before the first went live), and
        # no step row differs, the steps after the round started included
        assert kinds_on.index("adapter_live") > max(
            i for i, k in enumerate(kinds_on) if k == "step_committed"
        )
        assert on.scalar("SELECT MAX(adapter_version) FROM solutions") == 0
        assert _rows(on, "steps", LORA_STEPS) == _rows(off, "steps", LORA_STEPS)
