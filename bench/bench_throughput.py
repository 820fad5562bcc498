"""Validated samples per hour and per CPU-second of the tiny trio: an earlier agora against this one.

    python -m bench throughput
    python -m bench.bench_throughput [--before main] [--steps 2] [--config configs/tiny.yaml]
                                     [k=v ...]

Both code trees run the same config with the same seed and overrides, one after the other:
`--before` (a git ref, exported with `git archive` into a temporary directory) and this checkout.
For each, `agora serve` starts the servers, then `agora run --steps N` attaches to them, so server
start and model preparation stay out of the figures. Measured per tree, from the run's own store
and `events.jsonl`:

- validated samples: buffer rows written by the committed steps (what training waits for);
- step wall time: the sum of `steps.wall_s`; samples per hour = samples / that * 3600;
- CPU seconds: user + system time of the servers' process tree and of `agora run` (with its
  grading workers) while the steps ran, so other load on a shared machine does not count;
- problem slots filled: problems solved / (`problems_per_step` * steps);
- requests and prompt tokens per role (`request_done` events), the anchor's among them;
- prefix-cache hit rate where the engine reports one: vLLM's `/metrics` counters
  (`vllm:prefix_cache_hits` / `vllm:prefix_cache_queries`, in tokens); `transformers serve` does
  not export one.

Default overrides: `ablations.lora=false` (a training round would run inside the measured window
in one tree and not the other) and `protocol.anchor_every=1` (so the second step shows what an
anchor costs when no adapter changed). Every figure is printed with its basis.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from agora_cli.stats import count_ratio
from bench.common import REPO, Row, cpu_flags, setup_env, table

DEFAULT_OVERRIDES = ("ablations.lora=false", "protocol.anchor_every=1")
TICK = os.sysconf("SC_CLK_TCK")


def _tree_cpu_s(root: int) -> float:
    """User + system CPU seconds of `root` and every live descendant (from /proc)."""
    parent: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        parent[int(entry)] = int(fields[1])
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / TICK  # utime, stime
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        kids = [p for p, pp in parent.items() if pp == pid and p not in tree]
        tree.update(kids)
        frontier += kids
    return sum(cpu.get(p, 0.0) for p in tree)


def _prefix_cache(url: str) -> tuple[float, float] | None:
    """(hit tokens, queried tokens) from a vLLM server's Prometheus `/metrics`, None if absent."""
    base = url.rstrip("/").removesuffix("/v1")
    try:
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return None
    totals = {"vllm:prefix_cache_hits": 0.0, "vllm:prefix_cache_queries": 0.0}
    seen = False
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0].removesuffix("_total")
        if name in totals and not line.startswith("#"):
            totals[name] += float(line.rsplit(" ", 1)[1])
            seen = True
    return (totals["vllm:prefix_cache_hits"], totals["vllm:prefix_cache_queries"]) if seen else None


def export_tree(ref: str, into: Path) -> Path:
    """The files of git ref `ref` of this repository, written under `into`."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def measure(tree: Path, config: str, steps: int, overrides: list[str], label: str) -> dict:
    """Serve, run `steps` steps, read the figures; everything under a temporary run dir."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    with tempfile.TemporaryDirectory(prefix=f"bench-{label}-") as tmp:
        run_dir = Path(tmp) / "run"
        agora = [sys.executable, "-m", "agora_cli"]
        which = subprocess.run(
            [*agora[:1], "-c", "import agora_cli; print(agora_cli.__file__)"],
            cwd=tree,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        assert which.stdout.startswith(str(tree)), f"{label}: imported {which.stdout.strip()}"
        serve = subprocess.Popen(
            [*agora, "serve", config, *overrides, "--run-dir", str(run_dir)],
            cwd=tree,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            servers = run_dir / "servers.json"
            t0 = time.perf_counter()
            while not servers.exists():
                if serve.poll() is not None:
                    raise RuntimeError(f"{label}: agora serve exited: {serve.stderr.read()[-800:]}")
                time.sleep(1)
            print(f"throughput: {label} servers up in {time.perf_counter() - t0:.0f} s", flush=True)
            cpu0, own0 = _tree_cpu_s(serve.pid), os.times()
            t1 = time.perf_counter()
            p = subprocess.run(
                [*agora, "run", config, *overrides, "--steps", str(steps), "--run-dir", str(run_dir)],
                cwd=tree,
                env=env,
                capture_output=True,
                text=True,
                timeout=7200,
            )
            wall = time.perf_counter() - t1
            own1 = os.times()
            cpu = (
                _tree_cpu_s(serve.pid)
                - cpu0
                + (own1.children_user - own0.children_user)
                + (own1.children_system - own0.children_system)
            )
            if p.returncode != 0:
                raise RuntimeError(f"{label}: agora run failed: {(p.stdout + p.stderr)[-800:]}")
            state = json.loads(servers.read_text())
            urls = [u for b in state.get("backends", {}).values() for u in (b.get("servers") or {}).values()]
            caches = [c for c in (_prefix_cache(u) for u in urls) if c]
        finally:
            serve.send_signal(signal.SIGINT)
            try:
                serve.wait(timeout=120)
            except subprocess.TimeoutExpired:
                serve.kill()
                serve.wait()
        return _figures(run_dir, wall, cpu, caches)


def _figures(run_dir: Path, wall: float, cpu: float, caches: list) -> dict[str, Any]:
    con = sqlite3.connect(run_dir / "agora.sqlite")
    con.row_factory = sqlite3.Row
    steps = con.execute(
        "SELECT COUNT(*) AS n, SUM(wall_s) AS wall, SUM(n_problems) AS problems "
        "FROM steps WHERE committed_at IS NOT NULL"
    ).fetchone()
    samples = con.execute("SELECT COUNT(*) FROM buffer").fetchone()[0]
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    con.close()
    per_role: dict[str, list[int]] = {}
    for line in (run_dir / "events.jsonl").read_text().splitlines():
        e = json.loads(line) if line.strip() else {}
        if e.get("kind") == "request_done" and e.get("ok"):
            r = per_role.setdefault(e.get("role") or "?", [0, 0, 0, 0])
            r[0] += 1
            r[1] += e.get("prompt_tokens") or 0
            if "cached_tokens" in e:  # vLLM's per-request prefix-cache hits
                r[2] += e["cached_tokens"] or 0
                r[3] += e.get("prompt_tokens") or 0
    return {
        "steps": steps["n"],
        "step_wall_s": steps["wall"] or 0.0,
        "run_wall_s": wall,
        "cpu_s": cpu,
        "samples": samples,
        "problems": steps["problems"] or 0,
        "slots": cfg["protocol"]["problems_per_step"] * steps["n"],
        "per_role": per_role,
        "prefix_cache": (sum(h for h, _ in caches), sum(q for _, q in caches)) if caches else None,
    }


def rows_for(label: str, m: dict) -> list[Row]:
    per_h = m["samples"] / m["step_wall_s"] * 3600 if m["step_wall_s"] else 0.0
    per_cpu = m["samples"] / m["cpu_s"] if m["cpu_s"] else 0.0
    roles = ", ".join(f"{r} {n}/{tok}" for r, (n, tok, *_) in sorted(m["per_role"].items()))
    out = [
        Row(
            "throughput",
            f"{label}: validated samples/h of step wall time",
            f"{per_h:.1f}",
            "-",
            None,
            f"{m['samples']} samples in {m['steps']} steps, {m['step_wall_s']:.0f} s",
        ),
        Row(
            "throughput",
            f"{label}: validated samples per CPU-hour",
            f"{per_cpu * 3600:.1f}",
            "-",
            None,
            f"{m['cpu_s']:.0f} CPU s (servers + agora run) while the steps ran",
        ),
        Row(
            "throughput",
            f"{label}: problem slots filled",
            f"{m['problems']}/{m['slots']}",
            "-",
            None,
            f"requests/prompt tokens per role: {roles}",
        ),
    ]
    if m["prefix_cache"]:
        hits, queries = m["prefix_cache"]
        out.append(
            Row(
                "throughput",
                f"{label}: prefix-cache hit rate, all roles",
                f"{hits / queries:.0%}",
                "-",
                None,
                f"{queries:.0f} prompt tokens (vLLM /metrics)",
            )
        )
    for role in ("verify", "vote"):
        n, _tok, hit, seen = (m["per_role"].get(role) or [0, 0, 0, 0])[:4]
        if seen:  # the engine reported per-request hits (usage.prompt_tokens_details)
            out.append(
                Row(
                    "throughput",
                    f"{label}: prefix-cache hit rate, {role}",
                    f"{hit / seen:.0%}",
                    "> 50%",
                    hit / seen > 0.5,
                    f"{hit} of {seen} prompt tokens over {n} requests",
                )
            )
    return out


def run(
    before: str = "main",
    steps: int = 2,
    config: str = "configs/tiny.yaml",
    overrides: tuple[str, ...] = DEFAULT_OVERRIDES,
) -> list[Row]:
    setup_env()
    print(f"throughput: CPU flags {cpu_flags()}; {os.cpu_count()} cores", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-before-") as tmp:
        old_tree = export_tree(before, Path(tmp) / "tree")
        got = {f"before ({before})": measure(old_tree, config, steps, list(overrides), "before")}
    got["after (this checkout)"] = measure(REPO, config, steps, list(overrides), "after")
    rows = [r for label, m in got.items() for r in rows_for(label, m)]
    (a, b) = got.values()
    rate = [m["samples"] / m["step_wall_s"] if m["step_wall_s"] else 0.0 for m in (a, b)]
    cpu_rate = [m["samples"] / m["cpu_s"] if m["cpu_s"] else 0.0 for m in (a, b)]
    note = (
        f"{config} {' '.join(overrides)}, {steps} steps, seed from the config; load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the end"
    )
    # Validated samples are counts: the ratio carries an exact 95% interval and the p of equal
    # rates; the 4x goal is established only when the interval's lower bound reaches it.
    ratio = (
        count_ratio(b["samples"], b["step_wall_s"], a["samples"], a["step_wall_s"])
        if a["samples"] + b["samples"] and a["step_wall_s"] and b["step_wall_s"]
        else None
    )
    rows.append(
        Row(
            "throughput",
            "after / before, validated samples per step-hour",
            ratio.text() if ratio else "-",
            "4x",
            rate[1] >= 4 * rate[0] if rate[0] else None,
            note + (f"; 4x {'established' if ratio.lo >= 4 else 'not established'} at 95%" if ratio else ""),
        )
    )
    rows.append(
        Row(
            "throughput",
            "after / before, validated samples per CPU-second",
            f"{cpu_rate[1] / cpu_rate[0]:.2f}x" if cpu_rate[0] else "-",
            "-",
            None,
            note,
        )
    )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default="main", help="git ref of the earlier agora")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--config", default="configs/tiny.yaml")
    ap.add_argument("overrides", nargs="*", help=f"key=value (default: {DEFAULT_OVERRIDES})")
    args = ap.parse_args()
    print(table(run(args.before, args.steps, args.config, tuple(args.overrides) or DEFAULT_OVERRIDES)))


if __name__ == "__main__":
    main()
