"""Ray replicas without a shared filesystem, on a simulated two-node Ray cluster (one CPU per
node) with one fake SGLang server per node, each launched by its replica's actor.

The servers cannot read the driver's adapter directories (`FAKE_SGLANG_UNREADABLE`, as another
node's disk would be), so every adapter they load must have reached their own node: through Ray's
object store, or through S3 (moto's server on 127.0.0.1). A replica whose actor is killed is
restarted by Ray and takes requests again only once it holds the live adapter; a fresh `Serving`
finds the replicas by actor name after the one that made them is gone.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import ray
from ray.cluster_utils import Cluster

from agora_cli.config import Config, Sampling, config_from_dict
from agora_cli.endpoint import Endpoint
from agora_cli.errors import ServerError
from agora_cli.events import EventBus
from agora_cli.paths import REPO_DIR, RunPaths
from agora_cli.serving import Serving, lora_server
from agora_cli.serving.keys import bearer
from agora_cli.serving.process import free_port, http
from agora_cli.serving.ray_replicas import NAMESPACE, actor_name, remove
from tests.ray_nodes import two_simulated_nodes

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
BASE = "org/base-a"
HI = [{"role": "user", "content": "hi"}]
SHORT = Sampling(max_tokens=4)
# moto's documented fake credentials; every Ray worker inherits them from the cluster's processes
FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[Cluster]:
    profile = os.environ.pop("AWS_PROFILE", None)  # moto's credentials, not a profile's
    try:
        with two_simulated_nodes(env=FAKE_AWS) as cluster:
            yield cluster
    finally:
        if profile is not None:
            os.environ["AWS_PROFILE"] = profile


def _fake_python(tmp_path: Path, load_delay_s: float = 0.0) -> str:
    """An interpreter stand-in: `<it> -m sglang.launch_server ARGS` runs the fake with ARGS, unable
    to read anything under the driver's `tmp_path/adapters` or its run directory (the key config
    SGLang is given must be the node's copy)."""
    script = tmp_path / "fake-python"
    script.write_text(
        "#!/bin/sh\nshift 2\n"
        f'export FAKE_SGLANG_UNREADABLE="{tmp_path / "adapters"}{os.pathsep}{tmp_path / "run"}" '
        f"FAKE_SGLANG_LOAD_DELAY_S={load_delay_s}\n"
        f'cd "{REPO_DIR}"\nexec "{sys.executable}" -m tests.fakes.sglang_launch "$@"\n'
    )
    script.chmod(0o700)
    return str(script)


def _config(tmp_path: Path, load_delay_s: float = 0.0, **cluster: Any) -> Config:
    return config_from_dict(
        {
            "name": "ray-delivery",
            "backends": {
                "gpu": {
                    "kind": "sglang",
                    "python": _fake_python(tmp_path, load_delay_s),
                    "startup_timeout_s": 120,
                }
            },
            "members": [{"name": n, "model": BASE, "backend": "gpu"} for n in ("a", "b")],
            "evaluation": {"calibration": "gsm8k"},
            "client": {"max_retries": 5, "backoff_initial_s": 0.05},
            "cluster": {
                "kind": "ray",
                "address": "auto",
                "backends": {"gpu": {"replicas": 2, "placement": "SPREAD", "num_gpus": 0, "num_cpus": 1}},
                **cluster,
            },
        }
    )


def _adapter(tmp_path: Path, version: str) -> Path:
    d = tmp_path / "adapters" / version
    d.mkdir(parents=True)
    (d / "adapter_config.json").write_text(json.dumps({"marker": version}))
    (d / "adapter_model.safetensors").write_bytes(os.urandom(4096))
    return d


def _listed(serving: Serving, url: str) -> dict[str, str]:
    """lora_name -> the path it was loaded from, as the replica at `url` lists it."""
    headers = bearer(serving.backends["gpu"]._api_key())  # type: ignore[attr-defined]
    data = http("GET", f"{url}/v1/models", headers=headers).json["data"]
    return {d["id"]: d["root"] for d in data if d.get("parent")}


@contextmanager
def _recording(serving: Serving, sent_to: list[str]) -> Iterator[None]:
    """Record the replica URL each request leases."""
    leased = serving.lease

    @contextmanager
    def lease(member: str) -> Iterator[Endpoint]:
        with leased(member) as ep:
            sent_to.append(ep.base_url.removesuffix("/v1"))
            yield ep

    serving.lease = lease  # type: ignore[method-assign]
    yield


def _wait(what: str, done: Any, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.1)


def test_the_object_store_delivers_each_version_to_both_nodes_and_the_switch_waits_for_both(
    tmp_path: Path, two_nodes: Cluster
) -> None:
    sent_to: list[str] = []
    results: list[tuple[bool, str]] = []  # (sent after the activation returned, reply)
    with Serving(_config(tmp_path, load_delay_s=0.3), RunPaths(tmp_path / "run")) as serving:
        backend: Any = serving.backends["gpu"]
        urls = list(backend.state()["servers"][BASE])
        serving.activate("a", _adapter(tmp_path, "v1"), 1)

        async def go() -> None:
            stop, switched = asyncio.Event(), asyncio.Event()

            async def worker() -> None:
                while not stop.is_set():
                    after = switched.is_set()
                    results.append((after, (await pool.chat("a", HI, SHORT)).text))

            workers = [asyncio.create_task(worker()) for _ in range(4)]
            await asyncio.to_thread(serving.activate, "a", _adapter(tmp_path, "v2"), 2)
            switched.set()
            await asyncio.gather(*(pool.chat("a", HI, SHORT) for _ in range(8)))
            stop.set()
            await asyncio.gather(*workers)  # a request that failed for good fails the test here
            await pool.aclose()

        with _recording(serving, sent_to):
            pool = serving.client_pool()  # resolves through the recording lease
            asyncio.run(go())
        backend.lora.finish()
        listed = {u: _listed(serving, u) for u in urls}
        _wait("the unloaded a-v1's copies deleted", lambda: not list(Path("/").glob(_copies(listed, "a-v1"))))
        copies = [Path(listed[u]["a-v2"]) for u in urls]
        markers = [json.loads((c / "adapter_config.json").read_text()) for c in copies]
    after = [text for was_after, text in results if was_after]
    roots = [Path(listed[u]["a-v2"]) for u in urls]
    assert not any(root.exists() for root in roots)  # stopping the replicas removed their copies
    assert after and set(after) == {"served by a-v2"}
    assert {text for _, text in results} <= {"served by a-v1", "served by a-v2"}
    assert set(sent_to) == set(urls)  # both replicas took requests
    assert [sorted(names) for names in listed.values()] == [["a-v2"], ["a-v2"]]  # a-v1 unloaded on each
    assert roots[0].parent != roots[1].parent  # each replica loaded its own node's copy...
    assert not any(root.is_relative_to(tmp_path) for root in roots)  # ...not the driver's directory
    assert markers == [{"marker": "v2"}] * 2  # ...of the second version's bytes


def _copies(listed: dict[str, dict[str, str]], name: str) -> str:
    """A glob (relative to /) for the node-local copies of `name`, next to the live ones."""
    folder = Path(next(iter(next(iter(listed.values())).values()))).parent.parent
    return str(folder.relative_to("/") / "*" / f"{name}-*")


@pytest.fixture
def moto_s3() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 with one bucket; yields its URL."""
    import boto3

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **FAKE_AWS},
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            try:
                return http("GET", url, timeout=2).status < 500
            except OSError:
                return False

        _wait("moto's server answers", up, timeout_s=60)
        boto3.client("s3", endpoint_url=url).create_bucket(Bucket="agora-adapters")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_s3_delivers_the_adapter_to_both_nodes(tmp_path: Path, two_nodes: Cluster, moto_s3: str) -> None:
    import boto3

    s3 = {"bucket": "agora-adapters", "prefix": "runs", "endpoint_url": moto_s3}
    with Serving(_config(tmp_path, adapters="s3", s3=s3), RunPaths(tmp_path / "run")) as serving:
        urls = list(serving.backends["gpu"].state()["servers"][BASE])
        serving.activate("a", _adapter(tmp_path, "v1"), 1)
        pool = serving.client_pool()

        async def burst() -> list[str]:
            texts = [r.text for r in await asyncio.gather(*(pool.chat("a", HI, SHORT) for _ in range(8)))]
            await pool.aclose()
            return texts

        texts = asyncio.run(burst())
        listed = {u: _listed(serving, u) for u in urls}
        markers = [json.loads((Path(listed[u]["a-v1"]) / "adapter_config.json").read_text()) for u in urls]
        client = boto3.client("s3", endpoint_url=moto_s3)
        objects = client.list_objects_v2(Bucket="agora-adapters")["Contents"]
        serving.activate("a", _adapter(tmp_path, "v2"), 2)
        serving.backends["gpu"].lora.finish()  # type: ignore[attr-defined] - a-v1 unloaded on each
        after_switch = [o["Key"] for o in client.list_objects_v2(Bucket="agora-adapters")["Contents"]]
    assert texts == ["served by a-v1"] * 8
    assert len(objects) == 1 and objects[0]["Key"].startswith("runs/")  # uploaded once, under the prefix
    assert len(after_switch) == 1 and "/a-v2-" in after_switch[0]  # the retired a-v1's object deleted
    roots = [Path(listed[u]["a-v1"]) for u in urls]
    assert roots[0].parent != roots[1].parent
    assert not any(root.is_relative_to(tmp_path) for root in roots)
    assert markers == [{"marker": "v1"}] * 2


def test_a_killed_replica_is_restarted_and_synced_before_it_takes_requests(
    tmp_path: Path, two_nodes: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lora_server, "REPLICA_CHECK_S", 0.3)
    events: list[dict] = []
    sent_to: list[str] = []
    texts: list[str] = []
    run = RunPaths(tmp_path / "run")
    with Serving(_config(tmp_path), run, EventBus([events.append])) as serving:
        backend: Any = serving.backends["gpu"]
        serving.activate("a", _adapter(tmp_path, "v1"), 1)
        shutil.rmtree(tmp_path / "adapters")  # the restarted replica's copy must come from the object store
        before = list(backend.state()["servers"][BASE])
        victim = backend._placed.replicas[BASE][1]

        async def go() -> None:
            stop = asyncio.Event()

            async def worker() -> None:
                while not stop.is_set():
                    texts.append((await pool.chat("a", HI, SHORT)).text)

            workers = [asyncio.create_task(worker()) for _ in range(4)]
            await asyncio.sleep(0)
            ray.kill(victim.actor, no_restart=False)  # as a crash: Ray restarts it
            await asyncio.to_thread(
                _wait, "the restarted replica took requests", lambda: set(sent_to) - set(before)
            )
            await asyncio.gather(*(pool.chat("a", HI, SHORT) for _ in range(8)))
            stop.set()
            await asyncio.gather(*workers)  # a request that failed for good fails the test here
            await pool.aclose()

        with _recording(serving, sent_to):
            pool = serving.client_pool()  # resolves through the recording lease
            asyncio.run(go())
        after = list(backend.state()["servers"][BASE])
        restarted = after[1]
        listed = _listed(serving, restarted)
    assert texts and set(texts) == {"served by a-v1"}  # none lost, none served without the adapter
    assert after[0] == before[0] and restarted != before[1]  # the restarted server has a new URL
    down = [e["url"] for e in events if e["kind"] == "replica_down"]
    synced = [e for e in events if e["kind"] == "replica_synced"]
    assert down[:1] == [before[1]] and [e["url"] for e in synced] == [restarted]
    assert synced[0]["loaded"] == ["a-v1"]
    assert not Path(listed["a-v1"]).is_relative_to(tmp_path)  # the copy on its node, from the store

    def refused() -> bool:
        try:
            http("GET", f"{before[1]}/health", timeout=2)
        except OSError:
            return True
        return False

    _wait("the killed actor's server stopped (its guard saw the actor die)", refused)


def test_a_fresh_serving_finds_the_replicas_by_actor_name(tmp_path: Path, two_nodes: Cluster) -> None:
    cfg, run = _config(tmp_path), RunPaths(tmp_path / "run")
    first = Serving(cfg, run)
    first.start()
    first.write_servers_file()
    first.activate("a", _adapter(tmp_path, "v1"), 1)
    urls = first.backends["gpu"].state()["servers"][BASE]
    # The process that made them is gone without stopping them (a killed `agora serve`): its
    # servers file names a dead process, and nothing of it runs any more.
    dead = subprocess.Popen(["true"])
    dead.wait()
    recorded = json.loads(run.servers.read_text())
    run.servers.write_text(json.dumps({**recorded, "pid": dead.pid}))
    first.backends["gpu"]._stopping.set()  # type: ignore[attr-defined]
    atexit.unregister(first._stop_at_exit)
    del first
    second = Serving(cfg, run)
    second.start()
    placed: Any = second.backends["gpu"]._placed  # type: ignore[attr-defined]
    try:
        pool = second.client_pool()

        async def burst() -> list[str]:
            texts = [r.text for r in await asyncio.gather(*(pool.chat("a", HI, SHORT) for _ in range(6)))]
            await pool.aclose()
            return texts

        texts = asyncio.run(burst())
        attached, found = second.attached, second.backends["gpu"].state()["servers"][BASE]
        second.stop()  # attached: leaves the replicas running
        names = [actor_name(run.root, "gpu", BASE, i) for i in range(2)]
        alive = [ray.get_actor(n, namespace=NAMESPACE) is not None for n in names]
        # One replica lost for good: a new start reuses the live one by name and replaces the other.
        ray.kill(ray.get_actor(names[1], namespace=NAMESPACE))
        _wait("the killed actor is gone", lambda: _gone(names[1]))
        third = Serving(cfg, run)
        third.start()
        placed = third.backends["gpu"]._placed  # type: ignore[attr-defined]
        restarted = third.backends["gpu"].state()["servers"][BASE]
        third.stop()
    finally:
        if placed.replicas:  # a failure above left them
            placed.owned = True
            remove(placed)
    assert attached and found == urls
    assert texts == ["served by a-v1"] * 6  # the live adapter, as the servers file recorded it
    assert alive == [True, True]
    assert restarted[0] == urls[0] and restarted[1] != urls[1]
    for n in names:
        with pytest.raises(ValueError):
            ray.get_actor(n, namespace=NAMESPACE)


def _gone(name: str) -> bool:
    try:
        ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return True
    return False


def test_a_load_from_the_drivers_directory_fails_when_nodes_do_not_share_it(
    tmp_path: Path, two_nodes: Cluster
) -> None:
    """The control: with `adapters: shared` the servers are given the driver's path, which these
    servers (like another node's) cannot read."""
    with Serving(_config(tmp_path, adapters="shared"), RunPaths(tmp_path / "run")) as serving:
        with pytest.raises(ServerError, match="Can't find adapter"):
            serving.activate("a", _adapter(tmp_path, "v1"), 1)
