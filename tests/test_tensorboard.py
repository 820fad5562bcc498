"""`logging.tensorboard: true` (issue 11): a run's step scalars in RUN/tensorboard/, read back with
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

pytestmark = pytest.mark.timeout(240)
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
        steps = store.query("SELECT step, difficulty, v_t, v_target FROM steps WHERE step < ? "
                            "ORDER BY step", (STEPS,))
        mu = {m: store.scalar("SELECT mu FROM ratings WHERE member = ? AND step < ? ORDER BY id "
                              "DESC LIMIT 1", (m, STEPS)) for m in MEMBERS}
        anchors = store.query("SELECT step, member, score FROM anchors WHERE member = 'alpha' "
                              "AND step < ? ORDER BY step", (STEPS,))
    assert len(steps) == STEPS
    acc = EventAccumulator(str(paths.tensorboard))
    acc.Reload()

    def series(tag: str) -> list[tuple[int, float]]:
        return [(e.step, e.value) for e in acc.Scalars(tag)]

    assert series("protocol/d_t") == [(r["step"], pytest.approx(r["difficulty"])) for r in steps]
    assert series("protocol/V_t") == [(r["step"], pytest.approx(r["v_t"])) for r in steps]
    assert series("protocol/V_target") == [(r["step"], pytest.approx(r["v_target"]))
                                           for r in steps]
    assert [s for s, _ in series("buffer/size")] == list(range(STEPS))
    for m in MEMBERS:  # the last committed rating of each member is the last point
        assert series(f"rating_mu/{m}")[-1] == (STEPS - 1, pytest.approx(mu[m], abs=1e-3))
    assert series("anchor/gsm8k_dev/alpha") == [(r["step"], pytest.approx(r["score"]))
                                                for r in anchors]
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
        result = runner.run(_config(fake.url, run_dir, tensorboard=True), run_dir=run_dir,
                            steps=2)
    assert result.committed == 2
    failed = [e for e in read_events(RunPaths(run_dir).events) if e["kind"] == "sink_failed"]
    assert len(failed) == 1 and failed[0]["sink"].endswith("tensorboard")
