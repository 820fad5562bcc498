"""Server replicas placed by Ray, beside the same servers on one machine: start, routing, balance, swap.

    python -m bench cluster                        # the default run (about a minute on 2 quiet cores)
    python -m bench.bench_cluster [--tiny] [--latency 0.02] [--concurrency 32] [--requests 1000]
    python -m bench.bench_cluster --vllm --save    # and two real vLLM CPU replicas (minutes)

Every server is the tests' fake SGLang server (`bench/fake_sglang.py`: real HTTP, SGLang's LoRA
endpoints, each answer delayed by `--latency` in place of generation), launched through agora's own
command line, so the figures are agora's and Ray's costs, not an engine's. Measured side by side in
one run:

1. Start. A simulated two-node Ray cluster (`ray.cluster_utils.Cluster`: head + 1 worker, 1 CPU
   each, no dashboard) comes up; then `Serving` with a `cluster:` section places 2 replicas (SPREAD:
   one per node) and returns when both answer (the first placement also connects this driver to
   the cluster). Against: the same 2 fake servers started without Ray, one after another, each healthy
   before the next (as agora starts servers), then `Serving` with `launch: false` and their URLs.
2. Routing. Microseconds per `Serving.lease` (the replica with the fewest requests in flight among
   those holding the member's adapter, counted in flight until the request ends) over 2 replicas
   and over 1, against a fixed endpoint (no lease at all); and requests per second through agora's
   `ClientPool` with 1 vs 2 replicas.
3. Balance. `--requests` requests with `--concurrency` in flight: answers per replica.
4. Swap-to-live. An adapter saved (a safetensors file of `--adapter-mb`), then `Serving.activate`
   (load on every replica, then switch the member) until it returns, repeated `--swaps` times under
   a steady load of `--concurrency` clients: seconds per swap with 1 and 2 replicas and with the
   Ray-placed pair, failed requests (target 0), and whether every request sent after a switch was
   answered by the new adapter. Whatever `activate` does to bring the adapter to the replicas
   (a path read by each server, or a copy through Ray's object store) is inside the figure.

`--vllm` (not in the default run, nor in a test): then the same placement, balance and swaps with
two real vLLM CPU replicas of SmolLM2 (`.venv-vllm`, configs/tiny.yaml's backend settings) and a
PEFT adapter like the trainer's, briefly (`VLLM`), as benchmark `cluster-vllm`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import REPO, Row, cpu_flags, setup_env, table

if TYPE_CHECKING:
    from agora_cli.client import ChatResult
    from agora_cli.config import Config
    from agora_cli.endpoint import Endpoint
    from agora_cli.serving import Serving

BASE = "org/base-a"  # the fake serves any name; nothing is downloaded
MEMBER = "a"
KEY_ENV = "AGORA_BENCH_CLUSTER_KEY"  # the Ray-placed fake servers' API key (see `config`)
MESSAGES = [{"role": "user", "content": "Count to three."}]
# The modules the trainer's all-linear adapter targets on a Llama-like model.
MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class Settings:
    """How much each part measures (`TINY`: every code path once, for the test)."""

    latency_s: float = 0.02  # each fake answer's delay
    concurrency: int = 32  # requests in flight
    requests: int = 1000  # per throughput/balance burst
    burst_rounds: int = 3  # 1 and 2 replicas alternately, the best round of each
    lease_iters: int = 50000  # per routing timing, best of `lease_rounds`
    lease_rounds: int = 5
    swaps: int = 7  # per serving
    adapter_mb: float = 20.0  # SmolLM2-135M's r=16 all-linear adapter in float32 is about 20 MB
    placements: int = 2  # Ray placements of the pair: the first also connects the driver

    @property
    def tiny(self) -> bool:
        return self == TINY


TINY = Settings(
    latency_s=0.01,
    concurrency=4,
    requests=24,
    lease_iters=200,
    lease_rounds=2,
    burst_rounds=1,
    swaps=2,
    adapter_mb=0.2,
    placements=1,
)


# --------------------------------------------------------------------------- setup


def fake_python(folder: Path, latency_s: float) -> str:
    """An interpreter stand-in: `<it> -m sglang.launch_server ARGS` runs the fake server with ARGS."""
    script = folder / "fake-python"
    script.write_text(
        f'#!/bin/sh\nshift 2\ncd "{REPO}"\n'
        f'exec "{sys.executable}" -m bench.fake_sglang --latency {latency_s} "$@"\n'
    )
    script.chmod(0o700)
    return str(script)


def config(python: str, s: Settings, urls: list[str] | None = None, replicas: int = 0) -> Config:
    """One member on one SGLang backend: launched by Ray as `replicas` actors, or (`urls`) servers
    started elsewhere."""
    from agora_cli.config import config_from_dict

    backend: dict[str, Any] = {"kind": "sglang", "python": python, "startup_timeout_s": 120}
    if urls is not None:
        backend |= {"launch": False, "urls": {BASE: urls}}
    raw: dict[str, Any] = {
        "name": "bench-cluster",
        "backends": {"gpu": backend},
        "members": [
            {"name": n, "model": BASE, "backend": "gpu", "max_concurrency": s.concurrency}
            for n in (MEMBER, "b")
        ],
        "evaluation": {"calibration": "gsm8k"},
    }
    if replicas:
        # A key of our own: the run's key (`secrets.token_urlsafe`) starts with "-" one time in 64,
        # and SGLang's launcher (the fake's too) reads `--api-key -...` as a missing value.
        os.environ.setdefault(KEY_ENV, f"bench-{secrets.token_hex(16)}")
        backend["api_key_env"] = KEY_ENV
        raw["cluster"] = {
            "kind": "ray",
            "address": "auto",
            "backends": {"gpu": {"replicas": replicas, "placement": "SPREAD", "num_gpus": 0, "num_cpus": 1}},
        }
    return config_from_dict(raw)


def transport(cfg: Config) -> str:
    """How the config says adapters reach the replicas, when its schema has a say."""
    way = getattr(cfg.cluster, "adapters", None) if cfg.cluster is not None else None
    if way is None:
        return "adapter dir read by path on each replica's node"
    return f"cluster.adapters: {getattr(way, 'kind', way)}"


def save_adapter(folder: Path, version: int, size_mb: float) -> Path:
    """A LoRA adapter dir as the trainer leaves it: adapter_config.json and a safetensors file of
    about `size_mb` (random weights: the fake only needs the path, a transport moves the bytes)."""
    import numpy as np
    from safetensors.numpy import save_file

    out = folder / f"{MEMBER}-v{version}"
    out.mkdir(parents=True)
    peft = {"peft_type": "LORA", "r": 16, "lora_alpha": 32, "target_modules": MODULES}
    (out / "adapter_config.json").write_text(json.dumps(peft | {"base_model_name_or_path": BASE}))
    n = max(1, int(size_mb * 2**20 / 4))
    weights = np.random.default_rng(version).standard_normal(n, dtype=np.float32)
    save_file({"base_model.model.lora_A.weight": weights}, str(out / "adapter_model.safetensors"))
    return out


@contextmanager
def plain_servers(python: str, logs: Path, n: int) -> Iterator[tuple[list[str], float]]:
    """`n` fake servers started without Ray, one after another, each healthy before the next;
    yields their URLs and the seconds that took."""
    from agora_cli.serving.process import ServerProcess, free_port

    procs: list[ServerProcess] = []
    try:
        t0 = time.perf_counter()
        for i in range(n):
            port = free_port()
            p = ServerProcess(
                name=f"fake SGLang {i}",
                cmd=[python, "-m", "sglang.launch_server", "--model-path", BASE, "--port", str(port)],
                url=f"http://127.0.0.1:{port}",
                log=logs / f"plain-{i}.log",
            )
            procs.append(p)
            p.start()
            p.wait_healthy(120)
        yield [p.url for p in procs], time.perf_counter() - t0
    finally:
        for p in procs:
            p.stop(grace_s=10)


@contextmanager
def ray_cluster() -> Iterator[float]:
    """A simulated two-node Ray cluster (1 CPU each, no dashboard) that `address: auto` finds;
    yields the seconds until both nodes were up."""
    import ray
    from ray.cluster_utils import Cluster

    t0 = time.perf_counter()
    # No dashboard (agora does not use it): a head whose dashboard port another Ray cluster on this
    # machine holds waits about a minute for it (seen here: 67 s against 5 to 8 s).
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        up = time.perf_counter() - t0
        old = os.environ.get("RAY_ADDRESS")
        os.environ["RAY_ADDRESS"] = cluster.address
        try:
            yield up
        finally:
            if old is None:
                os.environ.pop("RAY_ADDRESS", None)
            else:
                os.environ["RAY_ADDRESS"] = old
    finally:
        ray.shutdown()
        cluster.shutdown()


# --------------------------------------------------------------------------- measurements


def counting(serving: Serving) -> Counter[str]:
    """Count, per replica, the requests whose lease ended without an error (answered requests);
    installed on `serving.lease`, which the client pool takes its leases from."""
    answered: Counter[str] = Counter()
    leased = serving.lease

    @contextmanager
    def lease(member: str) -> Iterator[Endpoint]:
        with leased(member) as ep:
            yield ep
            answered[ep.base_url.removesuffix("/v1")] += 1  # not reached when the request raised

    serving.lease = lease  # type: ignore[method-assign]
    return answered


def lease_us(serving: Serving, s: Settings) -> dict[str, float]:
    """Microseconds per lease over this serving's replicas, and per fixed endpoint (no routing),
    interleaved round by round; the best round of each (the machine is shared and noisy)."""
    endpoint = serving.endpoint(MEMBER)
    ways: dict[str, Callable[[], AbstractContextManager[Any]]] = {
        "lease": lambda: serving.lease(MEMBER),
        "fixed": lambda: nullcontext(endpoint),
    }
    best = {k: float("inf") for k in ways}
    for _ in range(s.lease_rounds):
        for k, make in ways.items():
            t0 = time.perf_counter()
            for _ in range(s.lease_iters):
                with make():
                    pass
            best[k] = min(best[k], (time.perf_counter() - t0) / s.lease_iters * 1e6)
    return best


def burst(serving: Serving, s: Settings, member: str = MEMBER, max_tokens: int = 4) -> dict[str, Any]:
    """`s.requests` requests at `s.concurrency` in flight through a fresh ClientPool: requests per
    second, this process's CPU milliseconds per request (the client's own cost: the servers are
    other processes), answers per replica, failures."""
    from agora_cli.config import Sampling

    answered = counting(serving)

    async def go() -> tuple[float, float, list[str]]:
        pool = serving.client_pool()
        failed: list[str] = []

        async def one() -> None:
            try:
                await pool.chat(member, MESSAGES, Sampling(max_tokens=max_tokens))
            except Exception as e:  # noqa: BLE001 - counted: a figure we report
                failed.append(f"{type(e).__name__}: {e}"[:200])

        await pool.chat(member, MESSAGES, Sampling(max_tokens=max_tokens))  # connections open first
        answered.clear()
        t0, cpu0 = time.perf_counter(), time.process_time()
        await asyncio.gather(*(one() for _ in range(s.requests)))
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        await pool.aclose()
        return seconds, cpu, failed

    try:
        seconds, cpu, failed = asyncio.run(go())
    finally:
        del serving.lease  # the class's own again
    return {
        "rps": s.requests / seconds,
        "cpu_ms": cpu / s.requests * 1000,
        "per_replica": dict(answered),
        "failed": failed,
    }


def best_bursts(servings: list[Serving], s: Settings) -> list[dict[str, Any]]:
    """`burst` on each serving in turn, `s.burst_rounds` times: each one's round with the most
    requests per second (the machine is shared; alternating spreads its noise over both), with
    the failures of every round."""
    best: list[dict[str, Any]] = [{} for _ in servings]
    failed: list[list[str]] = [[] for _ in servings]
    for _ in range(s.burst_rounds):
        for i, serving in enumerate(servings):
            got = burst(serving, s)
            failed[i] += got["failed"]
            if got["rps"] > best[i].get("rps", 0):
                best[i] = got
    return [b | {"failed": f} for b, f in zip(best, failed, strict=True)]


class Versions:
    """Adapter versions never reused in one run (a reused name would be a stale adapter);
    `make(version)` saves one and returns its directory."""

    def __init__(self, make: Callable[[int], Path]):
        self.make, self.last = make, 0

    def save(self) -> tuple[Path, int]:
        self.last += 1
        return self.make(self.last), self.last


def fake_served(r: ChatResult) -> str:
    """The adapter that answered, as the fake server says in its reply."""
    return r.text.removeprefix("served by ")


def swaps(
    serving: Serving,
    versions: Versions,
    s: Settings,
    member: str = MEMBER,
    max_tokens: int = 4,
    served: Callable[[ChatResult], str] = fake_served,
) -> dict[str, Any]:
    """`s.swaps` activations under a steady load of `s.concurrency` clients: seconds from each
    adapter saved to `activate` returning, failed requests, and which adapter (`served`) answered
    each request sent between one switch and the next save."""
    from agora_cli.config import Sampling

    async def go() -> dict[str, Any]:
        pool = serving.client_pool()
        done: list[tuple[float, str]] = []  # (sent, adapter that answered) of each answered request
        failed: list[str] = []
        running = [True]

        async def client() -> None:
            while running[0]:
                sent = time.perf_counter()
                try:
                    r = await pool.chat(member, MESSAGES, Sampling(max_tokens=max_tokens))
                    done.append((sent, served(r)))
                except Exception as e:  # noqa: BLE001 - counted: a figure we report
                    failed.append(f"{type(e).__name__}: {e}"[:200])

        clients = [asyncio.create_task(client()) for _ in range(s.concurrency)]
        await asyncio.sleep(0.5)  # the load is on before the first adapter is saved
        seconds: list[float] = []
        windows: list[tuple[float, float, str]] = []  # (switched, next save, the live adapter)
        for _ in range(s.swaps):
            if windows:  # requests sent from here on may meet the next switch: not checked
                switched, _, name = windows[-1]
                windows[-1] = (switched, time.perf_counter(), name)
            path, version = await asyncio.to_thread(versions.save)
            t0 = time.perf_counter()  # saved: the clock starts
            await asyncio.to_thread(serving.activate, member, path, version)
            t1 = time.perf_counter()
            seconds.append(t1 - t0)
            windows.append((t1, float("inf"), f"{member}-v{version}"))
            deadline = t1 + 60  # a load that only fails gets no answers: its failures are the figure
            while sum(1 for sent, _ in done if sent > t1) < s.concurrency and time.perf_counter() < deadline:
                await asyncio.sleep(0.01)  # some answers after the switch before the next save
        running[0] = False
        await asyncio.gather(*clients)
        await pool.aclose()
        after = [(got, name) for sent, got in done for t1, t2, name in windows if t1 < sent < t2]
        return {
            "seconds": seconds,
            "failed": failed,
            "answered": len(done),
            "after": len(after),
            "after_new": sum(1 for got, name in after if got == name),
        }

    return asyncio.run(go())


# --------------------------------------------------------------------------- the run


def measure(s: Settings) -> dict[str, Any]:
    """Everything `rows` reports, in one run: first the two fake servers without Ray (start,
    routing, throughput, swaps with 1 and 2 replicas), then the Ray-placed pair (start, balance,
    swaps)."""
    from agora_cli.paths import RunPaths
    from agora_cli.serving import Serving

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        root = Path(tmp)
        python = fake_python(root, s.latency_s)
        versions = Versions(lambda v: save_adapter(root / "adapters", v, s.adapter_mb))
        print("cluster: 2 fake servers without Ray", flush=True)
        with plain_servers(python, root / "plain-logs", 2) as (urls, started):
            two = Serving(config(python, s, urls=urls), RunPaths(root / "plain-2"))
            one = Serving(config(python, s, urls=urls[:1]), RunPaths(root / "plain-1"))
            try:
                t0 = time.perf_counter()
                two.start()
                out["plain_start_s"] = started + time.perf_counter() - t0
                one.start()
                for serving in (one, two):  # an adapter live, so routing checks which replica holds it
                    path, version = versions.save()
                    serving.activate(MEMBER, path, version)
                print("cluster: routing and throughput, 1 vs 2 replicas", flush=True)
                out["lease_1"], out["lease_2"] = lease_us(one, s), lease_us(two, s)
                out["burst_1"], out["burst_2"] = best_bursts([one, two], s)
                print("cluster: swaps under load, 1 vs 2 replicas", flush=True)
                out["swap_1"], out["swap_2"] = swaps(one, versions, s), swaps(two, versions, s)
            finally:
                one.stop()
                two.stop()
        print("cluster: a simulated two-node Ray cluster", flush=True)
        with ray_cluster() as up:
            out["ray_up_s"] = up
            out["ray_place_s"] = []
            for i in range(s.placements):
                cfg = config(python, s, replicas=2)
                serving = Serving(cfg, RunPaths(root / f"ray-{i}"))
                t0 = time.perf_counter()
                serving.start()
                out["ray_place_s"].append(time.perf_counter() - t0)
                if i < s.placements - 1:
                    serving.stop()
            try:
                out["transport"] = transport(cfg)
                out["ray_nodes"] = nodes_of(serving)
                print("cluster: balance and swaps on the Ray-placed pair", flush=True)
                path, version = versions.save()
                serving.activate(MEMBER, path, version)
                out["burst_ray"] = burst(serving, s)
                out["swap_ray"] = swaps(serving, versions, s)
            finally:
                serving.stop()
    return out


def nodes_of(serving: Serving, backend: str = "gpu") -> int:
    """How many nodes the Ray-placed replicas landed on."""
    from ray.util import placement_group_table

    placed = serving.backends[backend]._placed  # type: ignore[attr-defined]
    return len(set(placement_group_table(placed.group)["bundles_to_node_id"].values()))


def spread(per_replica: dict[str, int], replicas: int) -> str:
    counts = sorted(per_replica.values(), reverse=True) + [0] * (replicas - len(per_replica))
    return f"{counts[0] / counts[-1]:.2f}x" if counts[-1] else "inf"


def ms(seconds: list[float]) -> str:
    """min / median / max in milliseconds."""
    return "/".join(f"{x * 1000:.0f}" for x in (min(seconds), statistics.median(seconds), max(seconds)))


def rows(m: dict[str, Any], s: Settings) -> list[Row]:
    """The table's rows (benchmark `cluster`)."""
    r = "cluster"
    ray_cold = m["ray_up_s"] + m["ray_place_s"][0]
    place = ", ".join(f"{x:.1f}" for x in m["ray_place_s"])
    lease = (m["lease_1"]["lease"], m["lease_2"]["lease"], m["lease_2"]["fixed"])
    b1, b2, br = m["burst_1"], m["burst_2"], m["burst_ray"]
    sw = {k: m[f"swap_{k}"] for k in ("1", "2", "ray")}
    failed = [f for x in (b1, b2, br, *sw.values()) for f in x["failed"]]
    after, after_new = (sum(x[k] for x in sw.values()) for k in ("after", "after_new"))
    load = f"{s.concurrency} in flight, fake latency {s.latency_s * 1000:.0f} ms"
    return [
        Row(
            r,
            "Ray cluster up (2 simulated nodes, 1 CPU each, no dashboard)",
            f"{m['ray_up_s']:.1f} s",
            note=f"CPU flags {cpu_flags()}; {cpu_name()}; load average {os.getloadavg()[0]:.1f}",
        ),
        Row(
            r,
            "2 replicas placed by Ray (SPREAD) until healthy",
            f"{m['ray_place_s'][0]:.1f} s",
            note=f"each placement: {place} s (the first connects the driver); on {m['ray_nodes']} nodes",
        ),
        Row(
            r,
            "same 2 fake servers started without Ray",
            f"{m['plain_start_s']:.1f} s",
            note="one after another, each healthy before the next; then Serving with launch: false",
        ),
        Row(
            r,
            "Ray start + placement / start without Ray",
            f"{ray_cold / m['plain_start_s']:.1f}x",
            note=f"{ray_cold:.1f} s vs {m['plain_start_s']:.1f} s: what the cluster costs before the first "
            "request",
        ),
        Row(
            r,
            "routing: lease over 2 replicas",
            f"{lease[1]:.1f} us",
            note=f"1 replica {lease[0]:.1f} us; fixed endpoint, no lease {lease[2]:.2f} us; "
            f"best of {s.lease_rounds} x {s.lease_iters}",
        ),
        Row(
            r,
            "requests/s through ClientPool, 2 vs 1 replicas",
            f"{b2['rps'] / b1['rps']:.2f}x",
            note=f"{b1['rps']:.0f} -> {b2['rps']:.0f} requests/s, client CPU {b1['cpu_ms']:.2f} -> "
            f"{b2['cpu_ms']:.2f} ms per request; best of {s.burst_rounds} x {s.requests} requests, {load}",
        ),
        Row(
            r,
            "balance: max/min answers per replica (Ray pair)",
            spread(br["per_replica"], 2),
            note=f"{sorted(br['per_replica'].values(), reverse=True)} of {s.requests}; without Ray "
            f"{sorted(b2['per_replica'].values(), reverse=True)} ({spread(b2['per_replica'], 2)}); "
            f"{br['rps']:.0f} requests/s",
        ),
        *(
            Row(
                r,
                f"adapter saved -> live on all replicas, {label}",
                f"{statistics.median(sw[k]['seconds']) * 1000:.0f} ms",
                note=f"min/median/max {ms(sw[k]['seconds'])} ms over {len(sw[k]['seconds'])} swaps"
                f" of a {s.adapter_mb:g} MB adapter under load ({load})"
                + (f"; {m['transport']}" if k == "ray" else ""),
            )
            for k, label in (("1", "1 replica"), ("2", "2 replicas"), ("ray", "2 Ray-placed replicas"))
        ),
        Row(
            r,
            "failed requests (all loads and swaps)",
            str(len(failed)),
            "0",
            not failed,
            failed[0]
            if failed
            else f"{sum(x['answered'] for x in sw.values())} answered during the swap runs",
        ),
        Row(
            r,
            "requests sent after a switch answered by the new adapter",
            f"{after_new}/{after}",
            "all",
            after_new == after,
        ),
    ]


def cpu_name() -> str:
    """The CPU's model name (Linux), else 'unknown CPU'."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.partition(':')[2].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"unknown CPU, {os.cpu_count()} cores"


# --------------------------------------------------------------------------- real vLLM (--vllm)

# Two real replicas on 2 shared cores: a short load, a few swaps.
VLLM = Settings(latency_s=0.0, concurrency=4, requests=32, burst_rounds=1, swaps=3, placements=1)
VLLM_MEMBER = "smol-a"


def measure_vllm(s: Settings) -> dict[str, Any]:
    """Two real vLLM CPU replicas of SmolLM2 (`.venv-vllm`, configs/tiny.yaml's backend settings)
    placed by Ray (SPREAD) on the simulated two nodes: placement until healthy, answers per replica,
    and swaps of the trainer's kind of adapter (PEFT, r=16, all linear layers) under load."""
    import shutil

    from agora_cli.config import config_from_dict
    from agora_cli.models import prepare
    from agora_cli.paths import RunPaths
    from agora_cli.serving import Serving
    from bench.bench_engines import backend_settings
    from bench.bench_hotswap import save_adapter as peft_adapter
    from bench.common import SMOL

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-cluster-vllm-") as tmp:
        root = Path(tmp)
        members = [VLLM_MEMBER, "smol-b"]  # one base model: one server per replica, as in tiny.yaml
        cfg = config_from_dict(
            {
                "name": "bench-cluster-vllm",
                "backends": {"vllm": backend_settings("vllm")},
                "members": [
                    {"name": n, "model": SMOL, "backend": "vllm", "max_concurrency": s.concurrency}
                    for n in members
                ],
                "training": {"r": 16, "alpha": 32},
                "cluster": {
                    "kind": "ray",
                    "address": "auto",
                    "backends": {
                        "vllm": {"replicas": 2, "placement": "SPREAD", "num_gpus": 0, "num_cpus": 1}
                    },
                },
            }
        )
        print("cluster --vllm: the adapter, then a Ray cluster and 2 vLLM replicas", flush=True)
        # Saved once before the servers take the cores; each swap's "save" copies it to a new dir.
        peft = peft_adapter(prepare(cfg.member(VLLM_MEMBER)), root / "peft")
        adapters = root / "adapters"
        versions = Versions(lambda v: Path(shutil.copytree(peft, adapters / f"{VLLM_MEMBER}-v{v}")))
        with ray_cluster() as up:
            out["ray_up_s"] = up
            serving = Serving(cfg, RunPaths(root / "run"))
            t0 = time.perf_counter()
            serving.start()
            out["ray_place_s"] = time.perf_counter() - t0
            try:
                out["transport"] = transport(cfg)
                out["ray_nodes"] = nodes_of(serving, "vllm")
                path, version = versions.save()
                serving.activate(VLLM_MEMBER, path, version)
                print("cluster --vllm: balance and swaps under load", flush=True)
                out["burst"] = burst(serving, s, VLLM_MEMBER, max_tokens=8)
                # vLLM names the adapter that answered in the reply's `model`
                out["swap"] = swaps(serving, versions, s, VLLM_MEMBER, 8, served=lambda r: r.model)
            finally:
                serving.stop()
    return out


def vllm_rows(m: dict[str, Any], s: Settings) -> list[Row]:
    """The `cluster-vllm` rows."""
    r = "cluster-vllm"
    b, sw = m["burst"], m["swap"]
    failed = b["failed"] + sw["failed"]
    load = f"{s.concurrency} in flight, 8 tokens each"
    return [
        Row(r, "Ray cluster up (2 simulated nodes, 1 CPU each, no dashboard)", f"{m['ray_up_s']:.1f} s"),
        Row(
            r,
            "2 vLLM CPU replicas of SmolLM2 placed by Ray until healthy",
            f"{m['ray_place_s']:.1f} s",
            note=f"one after another; on {m['ray_nodes']} nodes",
        ),
        Row(
            r,
            "balance: max/min answers per replica",
            spread(b["per_replica"], 2),
            note=f"{sorted(b['per_replica'].values(), reverse=True)} of {s.requests}; {b['rps']:.1f} "
            f"requests/s at {load}",
        ),
        Row(
            r,
            "adapter saved -> live on both replicas",
            f"{statistics.median(sw['seconds']) * 1000:.0f} ms",
            note=f"min/median/max {ms(sw['seconds'])} ms over {len(sw['seconds'])} swaps of a PEFT r=16 "
            f"all-linear adapter under load ({load}); {m['transport']}",
        ),
        Row(r, "failed requests", str(len(failed)), "0", not failed, failed[0] if failed else ""),
        Row(
            r,
            "requests sent after a switch answered by the new adapter",
            f"{sw['after_new']}/{sw['after']}",
            "all",
            sw["after_new"] == sw["after"],
        ),
    ]


def run(settings: Settings | None = None, vllm: bool = False) -> list[Row]:
    """The benchmark as `python -m bench cluster` runs it; `vllm`: then the real vLLM part."""
    setup_env()
    s = settings or Settings()
    out = rows(measure(s), s)
    if vllm:
        from agora_cli.serving.vllm import default_python

        if not Path(default_python()).exists():
            return [
                *out,
                Row("cluster-vllm", "skipped", "-", note=f"no vLLM interpreter at {default_python()}"),
            ]
        out += vllm_rows(measure_vllm(VLLM), VLLM)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_cluster", description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="every part once, briefly (what the test runs)")
    d = Settings()
    ap.add_argument("--latency", type=float, default=d.latency_s, help="each fake answer's delay, seconds")
    ap.add_argument("--concurrency", type=int, default=d.concurrency)
    ap.add_argument("--requests", type=int, default=d.requests)
    ap.add_argument("--swaps", type=int, default=d.swaps)
    ap.add_argument("--adapter-mb", type=float, default=d.adapter_mb)
    ap.add_argument(
        "--vllm",
        action="store_true",
        help="also two real vLLM CPU replicas of SmolLM2 (.venv-vllm): minutes of both cores",
    )
    ap.add_argument("--save", action="store_true", help="add the table to bench/RESULTS.md")
    args = ap.parse_args(argv)
    s = (
        TINY
        if args.tiny
        else replace(
            d,
            latency_s=args.latency,
            concurrency=args.concurrency,
            requests=args.requests,
            swaps=args.swaps,
            adapter_mb=args.adapter_mb,
        )
    )
    t0 = time.perf_counter()
    got = run(s, vllm=args.vllm)
    print(table(got))
    if args.save:
        from bench.__main__ import save

        command = "python -m bench.bench_cluster" + " ".join(
            ["", *(argv if argv is not None else sys.argv[1:])]
        )
        save(got, command.replace(" --save", ""), time.perf_counter() - t0, REPO / "bench" / "RESULTS.md")


if __name__ == "__main__":
    main()
