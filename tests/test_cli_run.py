"""`agora run`, `agora status` and the stage commands through Typer's CliRunner."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from agora_cli.cli import app
from agora_cli.paths import RunPaths
from agora_cli.stats import wilson
from agora_cli.store import Store
from tests.fakes.ensemble import responder, write_config
from tests.fakes.openai_server import FakeOpenAI

pytestmark = pytest.mark.timeout(120)
cli = CliRunner()


@pytest.mark.integration
def test_run_prints_one_line_per_step_then_status(tmp_path, run_dir):
    with FakeOpenAI(responder(), latency_s=0.0) as fake:
        cfg = write_config(tmp_path / "fake.yaml", fake.url, run_dir)
        res = cli.invoke(app, ["run", str(cfg), "--steps", "2", "--run-dir", str(run_dir)])
    assert res.exit_code == 0, res.output
    lines = [x for x in res.output.splitlines() if x.startswith("step ")]
    assert [x.split(" |")[0] for x in lines] == ["step 0", "step 1"]
    assert "buffer untrained 2/100, total 2" in lines[0] and "buffer untrained 4/100, total 4" in lines[1]
    assert "2 step(s) committed" in res.output

    st = cli.invoke(app, ["status", str(run_dir)])
    assert st.exit_code == 0, st.output
    out = st.output
    assert "2 step(s) committed" in out
    assert "buffer untrained 4/100 (4 buffered in total)" in out
    for member in ("alpha", "beta", "gamma"):
        assert member in out
    assert "step_committed" in out  # last events from events.jsonl
    assert "V_t 0.667 [0.300, 0.903] (4/6)" in out  # with its 95% Wilson interval


@pytest.mark.integration
def test_overrides_and_config_errors(tmp_path, run_dir):
    with FakeOpenAI(responder(), latency_s=0.0) as fake:
        cfg = write_config(tmp_path / "fake.yaml", fake.url, run_dir)
        res = cli.invoke(
            app, ["run", str(cfg), "protocol.problems_per_step=1", "--steps", "1", "--run-dir", str(run_dir)]
        )
        assert res.exit_code == 0, res.output
        with Store(RunPaths(run_dir).store) as store:
            assert store.scalar("SELECT COUNT(*) FROM problems") == 1
        # Same run dir, different config: refused with the changed key, exit 2.
        res = cli.invoke(app, ["run", str(cfg), "--steps", "2", "--run-dir", str(run_dir)])
    assert res.exit_code == 2
    assert "protocol.problems_per_step" in res.output and "--force" in res.output


@pytest.mark.integration
def test_a_run_resumes_under_new_execution_settings_but_not_new_hyperparameters(tmp_path, run_dir):
    """Threads, memory, checkpointing, the loss's chunks and the LoRA kernel change how the
    trainer computes, not what: resuming with new ones is no config change (and the stored config
    takes them); the LoRA rank is one."""
    import yaml

    execution = [
        "training.max_threads=2",
        "training.memory_budget_gb=3",
        "training.gradient_checkpointing=true",
        "training.loss_chunk_tokens=0",
        "training.lora_dropout_kernel=peft",
    ]
    with FakeOpenAI(responder(), latency_s=0.0) as fake:
        cfg = write_config(tmp_path / "fake.yaml", fake.url, run_dir)
        res = cli.invoke(app, ["run", str(cfg), "--steps", "1", "--run-dir", str(run_dir)])
        assert res.exit_code == 0, res.output
        res = cli.invoke(app, ["run", str(cfg), *execution, "--steps", "2", "--run-dir", str(run_dir)])
        assert res.exit_code == 0, res.output
        assert "2 step(s) committed" in res.output
        stored = yaml.safe_load(RunPaths(run_dir).config.read_text())["training"]
        assert (stored["max_threads"], stored["lora_dropout_kernel"]) == (2, "peft")
        res = cli.invoke(app, ["run", str(cfg), "training.r=4", "--steps", "3", "--run-dir", str(run_dir)])
    assert res.exit_code == 2
    assert "training.r" in res.output and "--force" in res.output
    assert "max_threads" not in res.output


@pytest.mark.unit
def test_status_of_missing_run_is_one_error_line(tmp_path):
    res = cli.invoke(app, ["status", str(tmp_path / "nope")])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "agora run" in lines[0]
    assert res.stdout == ""


@pytest.mark.integration
def test_stage_commands_then_run_reuses_their_work(tmp_path, run_dir):
    with FakeOpenAI(responder(), latency_s=0.0) as fake:
        cfg = write_config(tmp_path / "fake.yaml", fake.url, run_dir)
        # A run with 0 steps only prepares the directory and the store.
        res = cli.invoke(app, ["run", str(cfg), "--steps", "0", "--run-dir", str(run_dir)])
        assert res.exit_code == 0, res.output
        out = {}
        for stage in ("generate", "solve", "verify", "vote"):
            res = cli.invoke(app, [stage, "--run-dir", str(run_dir)])
            assert res.exit_code == 0, res.output
            out[stage] = res.output.strip()
        assert out["generate"] == "step 0 generate: wrote 2 problems"
        assert out["solve"] == "step 0 solve: wrote 6 solutions"
        assert out["verify"] == "step 0 verify: wrote 12 verdicts"
        assert out["vote"] == "step 0 vote: wrote 6 votes"
        # Running a stage again asks nothing and writes nothing.
        n = len(fake.requests)
        res = cli.invoke(app, ["solve", "--run-dir", str(run_dir)])
        assert res.output.strip() == "step 0 solve: wrote nothing (done)"
        assert len(fake.requests) == n
        # `agora run` commits the step with the staged work: only explanations are new requests.
        res = cli.invoke(app, ["run", str(cfg), "--steps", "1", "--run-dir", str(run_dir)])
        assert res.exit_code == 0, res.output
        new_roles = {r.role for r in fake.requests[n:]}
    assert new_roles == {"explain"}
    with Store(RunPaths(run_dir).store) as store:
        assert store.scalar("SELECT COUNT(*) FROM solutions") == 6
        assert store.scalar("SELECT COUNT(*) FROM votes") == 6
        assert store.scalar("SELECT n_correct FROM steps WHERE step = 0") == 4


@pytest.mark.integration
def test_status_while_a_run_is_live(tmp_path, run_dir):
    """`agora status` from another process while `agora run` is mid-step (stalled on a request)."""
    import os
    import signal
    import subprocess
    import sys
    import threading
    import time

    from tests.fakes.ensemble import REPO
    from tests.fakes.openai_server import Reply

    script = responder()
    stalled = threading.Event()

    def stall_votes(req):
        if req.role == "vote":
            stalled.set()
            return Reply(text="A", delay_s=60)
        return script(req)

    with FakeOpenAI(stall_votes, latency_s=0.0) as fake:
        cfg = write_config(tmp_path / "fake.yaml", fake.url, run_dir)
        p = subprocess.Popen(
            [sys.executable, "-m", "agora_cli", "run", str(cfg), "--steps", "1", "--run-dir", str(run_dir)],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert stalled.wait(60)
            # Verdicts of the other problem may still be landing; wait until all 12 are stored.
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                st = cli.invoke(app, ["status", str(run_dir)])
                if "verdicts 12" in st.output:
                    break
                time.sleep(0.2)
        finally:
            os.kill(p.pid, signal.SIGKILL)
            p.wait(30)
    assert st.exit_code == 0, st.output
    assert "0 step(s) committed, step 0 open" in st.output
    assert "open step work: problems 2, solutions 6, verdicts 12, votes 0" in st.output


@pytest.mark.integration
def test_ctrl_c_stops_cleanly_and_the_run_resumes(tmp_path, run_dir):
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.fakes.ensemble import REPO

    with FakeOpenAI(responder(), latency_s=0.01) as fake:
        cfg = write_config(tmp_path / "fake.yaml", fake.url, run_dir)
        p = subprocess.Popen(  # no --steps: runs until interrupted
            [sys.executable, "-m", "agora_cli", "run", str(cfg), "--run-dir", str(run_dir)],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # Interrupt mid-step once two steps are committed: wait on the run's own events, not on
        # a request count (a fresh clone's first imports can take most of a minute under load).
        events = RunPaths(run_dir).events

        def committed() -> int:
            text = events.read_text() if events.exists() else ""
            return text.count('"kind": "step_committed"')

        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and committed() < 2:
            time.sleep(0.05)
        votes = len(fake.requests_for("vote"))
        while time.monotonic() < deadline and len(fake.requests_for("vote")) < votes + 3:
            time.sleep(0.05)  # the third step is under way
        p.send_signal(signal.SIGINT)
        # A hang guard, not a timing: on a loaded 2-core CI box the interrupted process needs
        # time to cancel the step, close its clients and exit.
        out, err = p.communicate(timeout=300)
        assert p.returncode == 130, out + err
        # What was kept and the command that resumes, no traceback.
        said, resume = err.strip().splitlines()
        with Store(RunPaths(run_dir).store) as store:
            done = store.last_committed_step() + 1
        assert done >= 2
        assert said.startswith(f"interrupted: {done} step(s) committed (steps 0-{done - 1}) are kept; ")
        assert resume == f"resume with: agora run {cfg} --run-dir {run_dir}"
        res = cli.invoke(app, ["run", str(cfg), "--steps", str(done + 1), "--run-dir", str(run_dir)])
    assert res.exit_code == 0, res.output
    assert f"resuming run {run_dir} at step {done}" in res.output
    with Store(RunPaths(run_dir).store) as store:
        assert store.last_committed_step() == done


@pytest.mark.integration
def test_status_shows_throughput_and_each_generators_drop_rate(tmp_path, run_dir):
    base = responder()
    alpha_asked = []

    def alpha_drops_its_first_problem(req):
        if req.role == "generate" and req.model == "alpha" and not alpha_asked:
            alpha_asked.append(1)
            return "hi"
        return base(req)

    with FakeOpenAI(alpha_drops_its_first_problem, latency_s=0.0) as fake:
        cfg = write_config(tmp_path / "fake.yaml", fake.url, run_dir, buffer_threshold=10)
        res = cli.invoke(app, ["run", str(cfg), "--steps", "2", "--run-dir", str(run_dir)])
    assert res.exit_code == 0, res.output
    with Store(RunPaths(run_dir).store) as store:
        wall = store.scalar("SELECT SUM(wall_s) FROM steps")
        buffered = store.scalar("SELECT COUNT(*) FROM buffer")
        by_author = {
            r["author"]: (r["n"], r["d"])
            for r in store.query(
                "SELECT author, COUNT(*) AS n, SUM(status = 'dropped') AS d FROM problems GROUP BY author"
            )
        }
    out = cli.invoke(app, ["status", str(run_dir)], terminal_width=200).output
    rate = buffered / wall * 3600
    assert f"buffered {rate:.1f}/h (entered the buffer) (" in out
    assert (
        f"{buffered} buffered in 2 step(s), {wall:.0f} s step wall time); "
        f"buffer threshold 10: {10 - buffered} untrained rows to go, ~"
    ) in out
    assert by_author["alpha"][1] == 1
    for member, (n, d) in by_author.items():  # the "q drop" column: each generator's drop rate
        row = next(line for line in out.splitlines() if f"{member} " in line and "v0" in line)
        lo, hi = wilson(d, n)  # with its 95% Wilson interval
        assert row.split("│")[8].strip() == f"{d / n:.0%} [{100 * lo:.0f}-{100 * hi:.0f}]"
    assert "seed" not in by_author
