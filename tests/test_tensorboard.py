"""`logging.tensorboard: true`: a run's step scalars in RUN/tensorboard/, read back with
TensorBoard's own EventAccumulator; a missing package is a config error; a failing writer never
stops the run."""

from __future__ import annotations

import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agora_cli import runner
from agora_cli.config import config_from_dict
from agora_cli.errors import ConfigError
from agora_cli.events import read_events
from agora_cli.paths import RunPaths
from agora_cli.store import Store
from tests.fakes.ensemble import MEMBERS, config_dict, responder
from tests.fakes.openai_server import FakeOpenAI

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
STEPS = 3


def _config(url: str, run_dir, **logging):
    data = config_dict(url, run_dir, anchor_every=1)
    data["ablations"]["external_anchor"] = True
    data["evaluation"] = {"calibration_size": 2, "grade_workers": 1}
    data["logging"] = logging
    return config_from_dict(data)


def test_step_scalars_are_written_for_every_step(run_dir):
    with FakeOpenAI(responder(), latency_s=0.0) as fake:
        runner.run(_config(fake.url, run_dir, tensorboard=True), run_dir=run_dir, steps=STEPS)
        # Logging is not part of the resume check: switched off, the run goes on (unlogged).
        runner.run(_config(fake.url, run_dir), run_dir=run_dir, steps=STEPS + 1)
    paths = RunPaths(run_dir)
    with Store(paths.store, readonly=True) as store:
        steps = store.query(
            "SELECT step, difficulty, v_t, v_target FROM steps WHERE step < ? ORDER BY step", (STEPS,)
        )
        mu = {
            m: store.scalar(
                "SELECT mu FROM ratings WHERE member = ? AND step < ? ORDER BY id DESC LIMIT 1", (m, STEPS)
            )
            for m in MEMBERS
        }
        anchors = store.query(
            "SELECT step, member, score FROM anchors WHERE member = 'alpha' AND step < ? ORDER BY step",
            (STEPS,),
        )
    assert len(steps) == STEPS
    acc = EventAccumulator(str(paths.tensorboard))
    acc.Reload()

    def series(tag: str) -> list[tuple[int, float]]:
        return [(e.step, e.value) for e in acc.Scalars(tag)]

    assert series("protocol/d_t") == [(r["step"], pytest.approx(r["difficulty"])) for r in steps]
    assert series("protocol/V_t") == [(r["step"], pytest.approx(r["v_t"])) for r in steps]
    assert series("protocol/V_target") == [(r["step"], pytest.approx(r["v_target"])) for r in steps]
    assert [s for s, _ in series("buffer/size")] == list(range(STEPS))
    for m in MEMBERS:  # the last committed rating of each member is the last point
        assert series(f"rating_mu/{m}")[-1] == (STEPS - 1, pytest.approx(mu[m], abs=1e-3))
    assert series("anchor/gsm8k_dev/alpha") == [(r["step"], pytest.approx(r["score"])) for r in anchors]
    assert len(anchors) == STEPS


def test_without_the_package_the_run_is_a_config_error(run_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` now fails
    with FakeOpenAI(responder()) as fake:
        with pytest.raises(ConfigError) as err:
            runner.run(_config(fake.url, run_dir, tensorboard=True), run_dir=run_dir, steps=1)
        assert fake.requests == []
    assert err.value.exit_code == 2
    assert "logging.tensorboard" in str(err.value) and "pip install tensorboard" in str(err.value)


def test_a_failing_writer_never_stops_the_run(run_dir):
    (run_dir / "tensorboard").write_text("a file where the log directory should be")
    with FakeOpenAI(responder(), latency_s=0.0) as fake:
        result = runner.run(_config(fake.url, run_dir, tensorboard=True), run_dir=run_dir, steps=2)
    assert result.committed == 2
    failed = [e for e in read_events(RunPaths(run_dir).events) if e["kind"] == "sink_failed"]
    assert len(failed) == 1 and failed[0]["sink"].endswith("tensorboard")


def test_consensus_audit_scalars_per_step_and_verifier(run_dir):
    """The audit's precision and recall (consensus, run so far, each verifier) are logged per
    step with the values of the stored counts. The fake's probes: beta answers wrong, everyone
    approves everything, so precision is 2/3 and recall 1 for the consensus."""
    from agora_cli.audit import CONSENSUS, Counts
    from tests.test_audit import audit_responder

    data = config_dict("http://unused", run_dir, audit_probes=1)
    data["logging"] = {"tensorboard": True}
    with FakeOpenAI(audit_responder("VALID"), latency_s=0.0) as fake:
        data["backends"]["fake"]["base_url"] = fake.url
        runner.run(config_from_dict(data), run_dir=run_dir, steps=2)
    paths = RunPaths(run_dir)
    with Store(paths.store, readonly=True) as store:
        rows = store.query("SELECT * FROM audit ORDER BY step, verifier")
    counts = {(r["step"], r["verifier"]): Counts(r["tp"], r["fp"], r["fn"], r["tn"]) for r in rows}
    assert {s for s, _ in counts} == {0, 1}
    acc = EventAccumulator(str(paths.tensorboard))
    acc.Reload()

    def series(tag: str) -> list[tuple[int, float]]:
        return [(e.step, e.value) for e in acc.Scalars(tag)]

    def want(verifier: str, which: str) -> list[tuple[int, float]]:
        out = []
        for t in (0, 1):
            k, n = getattr(counts[(t, verifier)], which)
            out.append((t, pytest.approx(k / n)))
        return out

    assert series("audit/precision") == want(CONSENSUS, "precision")
    assert series("audit/recall") == want(CONSENSUS, "recall")
    assert series("audit/precision") == [(0, pytest.approx(2 / 3)), (1, pytest.approx(2 / 3))]
    assert series("audit/recall") == [(0, 1.0), (1, 1.0)]
    for m in MEMBERS:
        assert series(f"audit_precision/{m}") == want(m, "precision")
        assert series(f"audit_recall/{m}") == want(m, "recall")
    assert series("audit_precision/beta") == [(0, 1.0), (1, 1.0)]  # judged only right ones
    run_total = Counts()
    for t in (0, 1):
        run_total += counts[(t, CONSENSUS)]
    k, n = run_total.precision
    assert series("audit/precision_run")[-1] == (1, pytest.approx(k / n))
