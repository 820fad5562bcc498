"""Replicas as Ray actors on a simulated two-node Ray cluster (`ray.cluster_utils.Cluster`, one
CPU per node): agora places one fake SGLang server per node (SPREAD), launched through its own
launch path by each actor, loads the adapter on both and routes requests between them."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import ray
import yaml  # the ray extra (in dev too): pip install 'agora-cli[ray]'
from ray.cluster_utils import Cluster
from ray.util import placement_group_table

from agora_cli.config import Sampling, config_from_dict
from agora_cli.endpoint import Endpoint
from agora_cli.errors import ServerError
from agora_cli.paths import REPO_DIR, RunPaths
from agora_cli.serving import Serving
from agora_cli.serving.keys import bearer
from agora_cli.serving.process import http
from agora_cli.serving.ray_replicas import NAMESPACE, actor_name
from tests.ray_nodes import two_simulated_nodes

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
BASE = "org/base-a"


def _fake_python(tmp_path: Path) -> str:
    """An interpreter stand-in: `<it> -m sglang.launch_server ARGS` runs the fake with ARGS."""
    script = tmp_path / "fake-python"
    script.write_text(
        f'#!/bin/sh\nshift 2\ncd "{REPO_DIR}"\nexec "{sys.executable}" -m tests.fakes.sglang_launch "$@"\n'
    )
    script.chmod(0o700)
    return str(script)


@pytest.fixture
def two_nodes() -> Iterator[Cluster]:
    with two_simulated_nodes() as cluster:
        yield cluster


def _ray_config(python: str, startup_timeout_s: float = 120) -> dict:
    """Members a and b on one SGLang backend (`python` runs its server) with two replicas as Ray
    actors, one per node."""
    return {
        "name": "ray",
        "backends": {"gpu": {"kind": "sglang", "python": python, "startup_timeout_s": startup_timeout_s}},
        "members": [{"name": n, "model": BASE, "backend": "gpu"} for n in ("a", "b")],
        "evaluation": {"calibration": "gsm8k"},
        "cluster": {
            "kind": "ray",
            "address": "auto",
            "backends": {"gpu": {"replicas": 2, "placement": "SPREAD", "num_gpus": 0, "num_cpus": 1}},
        },
    }


def test_replicas_are_placed_one_per_node_and_requests_use_both(tmp_path: Path, two_nodes: Cluster) -> None:
    cfg = config_from_dict(_ray_config(_fake_python(tmp_path)))
    adapter = tmp_path / "adapters" / "a-v1"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    run = RunPaths(tmp_path / "run")
    sent_to: list[str] = []
    with Serving(cfg, run) as serving:
        backend = serving.backends["gpu"]
        urls = backend.state()["servers"][BASE]
        nodes = placement_group_table(backend._placed.group)["bundles_to_node_id"]
        assert len(urls) == 2 and len(set(nodes.values())) == 2  # one replica on each node
        serving.activate("a", adapter, 1)
        leased = serving.lease

        @contextmanager
        def recording(member: str) -> Iterator[Endpoint]:
            with leased(member) as ep:
                sent_to.append(ep.base_url.removesuffix("/v1"))
                yield ep

        serving.lease = recording  # type: ignore[method-assign]
        pool = serving.client_pool()

        async def burst() -> list[str]:
            chats = [
                pool.chat("a", [{"role": "user", "content": "hi"}], Sampling(max_tokens=4)) for _ in range(8)
            ]
            texts = [r.text for r in await asyncio.gather(*chats)]
            await pool.aclose()
            return texts

        texts = asyncio.run(burst())
        headers = bearer(backend._api_key())
        listed = [http("GET", f"{u}/v1/models", headers=headers).json["data"] for u in urls]
        names = [actor_name(run.root, "gpu", BASE, i) for i in range(2)]
        assert all(ray.get_actor(n, namespace=NAMESPACE) for n in names)  # named, found by name
    assert texts == ["served by a-v1"] * 8
    assert set(sent_to) == set(urls)  # both replicas took requests
    for data in listed:  # the adapter was loaded on each replica
        assert "a-v1" in [d["id"] for d in data]
    for n in names:  # stopping the serving ended the actors
        with pytest.raises(ValueError):
            ray.get_actor(n, namespace=NAMESPACE)


def test_a_replica_that_cannot_start_reports_its_log_and_leaves_nothing(
    tmp_path: Path, two_nodes: Cluster
) -> None:
    """The server's log is written on its node; the error agora raises quotes its last lines (read
    there), so the reason reaches the driver without a shared disk. No actor is left behind."""
    script = tmp_path / "failing-python"
    script.write_text("#!/bin/sh\necho 'fake sglang: CUDA unavailable on this node' >&2\nexit 3\n")
    script.chmod(0o700)
    cfg = config_from_dict(_ray_config(str(script), startup_timeout_s=60))
    run = RunPaths(tmp_path / "run")
    with pytest.raises(ServerError) as raised:
        Serving(cfg, run).start()
    message = str(raised.value)
    assert "did not start on the Ray cluster" in message
    assert "exited with code 3" in message and "CUDA unavailable on this node" in message
    for i in range(2):
        with pytest.raises(ValueError):
            ray.get_actor(actor_name(run.root, "gpu", BASE, i), namespace=NAMESPACE)


def test_serve_stop_ends_the_replicas_a_killed_serve_left(tmp_path: Path, two_nodes: Cluster) -> None:
    """`agora serve` is SIGKILLed: its detached actors and their servers stay (a later run could
    attach). `agora serve --stop` ends them, while it refuses as long as that serve holds the run."""
    config = tmp_path / "ray.yaml"
    config.write_text(yaml.safe_dump(_ray_config(_fake_python(tmp_path))))
    run = RunPaths(tmp_path / "run")
    agora = [sys.executable, "-m", "agora_cli", "serve", str(config), "--run-dir", str(run.root)]
    serve = subprocess.Popen(agora, cwd=REPO_DIR, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while not run.servers.exists():
            assert serve.poll() is None and time.monotonic() < deadline, "agora serve did not come up"
            time.sleep(0.2)
        urls = json.loads(run.servers.read_text())["backends"]["gpu"]["servers"][BASE]
        refused = subprocess.run([*agora, "--stop"], cwd=REPO_DIR, capture_output=True, text=True)
        assert refused.returncode == 2 and "serve" in refused.stderr + refused.stdout
        serve.kill()
        serve.wait()
        assert all(http("GET", f"{u}/health", timeout=5).status == 200 for u in urls)  # left running
        stopped = subprocess.run([*agora, "--stop"], cwd=REPO_DIR, capture_output=True, text=True)
    finally:
        serve.kill()
    assert stopped.returncode == 0, stopped.stderr
    names = [actor_name(run.root, "gpu", BASE, i) for i in range(2)]
    assert f"gpu: ended 2 replica(s): {', '.join(names)}" in " ".join(stopped.stdout.split())
    for n in names:
        with pytest.raises(ValueError):
            ray.get_actor(n, namespace=NAMESPACE)
    for u in urls:
        with pytest.raises(OSError):
            http("GET", f"{u}/health", timeout=5)
    again = subprocess.run([*agora, "--stop"], cwd=REPO_DIR, capture_output=True, text=True)
    assert again.returncode == 0 and "no replicas of" in again.stdout


def test_without_a_cluster_section_nothing_imports_ray(tmp_path: Path) -> None:
    """A fresh interpreter (modules imported at collection would hide a module-level import)."""
    code = (
        "import sys; from agora_cli.cli import main; from agora_cli.config import config_from_dict; "
        "from agora_cli.paths import RunPaths; from agora_cli.serving import Serving; "
        "cfg = config_from_dict({'name': 'c', 'backends': {'gpu': {'kind': 'sglang'}}, "
        "'members': [{'name': n, 'model': 'org/m', 'backend': 'gpu'} for n in 'ab'], "
        "'evaluation': {'calibration': 'gsm8k'}}); "
        f"Serving(cfg, RunPaths({str(tmp_path)!r})).describe(); "
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_DIR, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
