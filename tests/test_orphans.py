"""No server outlives agora: a SIGKILLed parent, a launching thread that ended, a second signal.

The servers here are a few lines of Python answering `/health` (real HTTP on 127.0.0.1) that
write their pid to a file, so the tests watch the server itself, not the guard in front of it. A
"stubborn" one ignores SIGTERM (noting each in a file), so only a SIGKILL ends it. Process states
come from /proc (Linux): a zombie counts as gone, it has exited.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from agora_cli.serving.merge import _remove_stale_temporaries
from agora_cli.serving.process import ServerProcess, free_port, is_healthy
from tests.fakes.ensemble import REPO

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

FAKE_SERVER = textwrap.dedent("""
    import os, signal, sys
    from http.server import BaseHTTPRequestHandler, HTTPServer
    from pathlib import Path

    pidfile, port, mode = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    if mode == "stubborn":
        def note(*args):
            with open(f"{pidfile}.term", "a") as f:
                f.write("TERM\\n")

        signal.signal(signal.SIGTERM, note)

    class Health(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", port), Health)
    tmp = pidfile.with_suffix(".tmp")
    tmp.write_text(str(os.getpid()))
    os.replace(tmp, pidfile)
    server.serve_forever()
""")

# A parent that launches servers the way a hot-swap does (from a thread that then ends) and
# waits. argv: run dir, mode, orphan grace, number of servers. Prints "ready <guard pids>".
PARENT = textwrap.dedent("""
    import sys, threading, time
    from pathlib import Path
    from agora_cli.serving.process import ServerProcess, free_port

    root, mode, grace, n = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    servers = []
    for i in range(n):
        port = free_port()
        servers.append(ServerProcess(
            name=f"fake{i}", url=f"http://127.0.0.1:{port}", log=root / f"fake{i}.log",
            cmd=[sys.executable, "-c", FAKE, str(root / f"fake{i}.pid"), str(port), mode],
            orphan_grace_s=grace,
        ))
    launcher = threading.Thread(target=lambda: [s.start() for s in servers])
    launcher.start()
    launcher.join()
    print("ready", *[s.pid for s in servers], flush=True)
    time.sleep(600)
""")

# A parent inside `Serving`, whose one backend stops its two servers one after the other (as the
# transformers backend does), each with a long grace. Stopped by signals from the test.
PARENT_SERVING = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from agora_cli.config import config_from_dict
    from agora_cli.paths import RunPaths
    from agora_cli.serving import Serving
    from agora_cli.serving.process import ServerProcess, free_port
    from tests.fakes.ensemble import config_dict

    root = Path(sys.argv[1])

    class Pair:
        def __init__(self):
            self.servers = []
            for i in range(2):
                port = free_port()
                self.servers.append(ServerProcess(
                    name=f"fake{i}", url=f"http://127.0.0.1:{port}", log=root / f"fake{i}.log",
                    cmd=[sys.executable, "-c", FAKE, str(root / f"fake{i}.pid"), str(port),
                         "stubborn"],
                    orphan_grace_s=600,  # the guard's own fallback must not be what stops them
                ))

        def start(self):
            for s in self.servers:
                s.start()

        def stop(self):
            servers, self.servers = self.servers, []
            for s in servers:
                s.stop(grace_s=600)

    cfg = config_from_dict(config_dict("http://127.0.0.1:9/v1", root / "run"))
    serving = Serving(cfg, RunPaths(root / "run"))
    serving.backends = {"pair": Pair()}
    with serving:
        print("ready", flush=True)
        time.sleep(600)
""")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def kill_leftovers(pids: list[int]) -> None:
    """When a test fails, do not leave its servers (or guards) running on the shared machine."""
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def wait_for(check, timeout_s: float = 30.0) -> bool:  # noqa: ANN001
    """Poll `check` until true or `timeout_s` passes (a hang guard, not a measured time)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


def read_pid(path: Path) -> int:
    assert wait_for(path.exists, 60), f"{path} never appeared"
    return int(path.read_text())


def spawn(script: str, *args: object) -> subprocess.Popen:
    code = f"FAKE = {FAKE_SERVER!r}\n{script}"
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )


def fake_server(tmp_path: Path, mode: str = "plain", name: str = "fake") -> ServerProcess:
    port = free_port()
    return ServerProcess(
        name=name,
        url=f"http://127.0.0.1:{port}",
        log=tmp_path / f"{name}.log",
        cmd=[sys.executable, "-c", FAKE_SERVER, str(tmp_path / f"{name}.pid"), str(port), mode],
    )


# --------------------------------------------------------------------------- killed parent


@pytest.mark.integration
@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["plain", "stubborn"])
def test_servers_of_a_sigkilled_parent_are_stopped(tmp_path: Path, mode: str) -> None:
    """kill -9 of agora: the guard stops its server (SIGTERM, then SIGKILL when ignored)."""
    parent = spawn(PARENT, tmp_path, mode, 1.0, 2)
    try:
        line = parent.stdout.readline().split()  # type: ignore[union-attr]
        assert line[:1] == ["ready"], line
        guards = [int(p) for p in line[1:]]
        servers = [read_pid(tmp_path / f"fake{i}.pid") for i in range(2)]
        assert all(alive(p) for p in servers + guards)
    finally:
        parent.kill()
        parent.wait(30)
    try:
        assert wait_for(lambda: not any(alive(p) for p in servers + guards)), (
            f"still running after the parent was killed: {[p for p in servers if alive(p)]}"
        )
    finally:
        kill_leftovers(servers + guards)
    if mode == "stubborn":  # it was asked to drain first, once
        assert (tmp_path / "fake0.pid.term").read_text() == "TERM\n"


@pytest.mark.integration
@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["plain", "stubborn"])
def test_a_guard_killed_alone_still_stops_its_server(tmp_path: Path, mode: str) -> None:
    """SIGKILL to the guard only, not its group, as Ray does to the children of an actor's worker
    that died: the guard's watchdog stops the server (SIGTERM, then SIGKILL when ignored)."""
    server = fake_server(tmp_path, mode)
    server.orphan_grace_s = 1.0
    server.start()
    try:
        server.wait_healthy(60)
        pid = read_pid(tmp_path / "fake.pid")
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait(10)
        assert wait_for(lambda: not alive(pid)), "the server outlived its guard"
    finally:
        server.kill()  # the group, if anything is left of it
    if mode == "stubborn":
        assert (tmp_path / "fake.pid.term").read_text() == "TERM\n"


@pytest.mark.integration
def test_a_server_outlives_the_thread_that_launched_it(tmp_path: Path) -> None:
    """Hot-swaps launch from the round manager's thread, which ends; the server must not."""
    server = fake_server(tmp_path)
    launcher = threading.Thread(target=server.start)
    launcher.start()
    launcher.join()
    tid = launcher.native_id
    try:
        # The OS thread is gone, not just the Python one: a parent-death signal tied to it (what
        # PR_SET_PDEATHSIG does) would have been sent by now.
        assert wait_for(lambda: not Path(f"/proc/self/task/{tid}").exists())
        server.wait_healthy(60)
        pid = read_pid(tmp_path / "fake.pid")
        assert wait_for(lambda: server.alive() and alive(pid) and is_healthy(server.url), 5)
    finally:
        server.stop()
    assert not alive(pid)  # stop() returns only once the guard has reaped the server


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_stop_sends_one_sigterm_and_kills_after_the_grace(tmp_path: Path) -> None:
    """The guard changes nothing about stop(): SIGTERM reaches the server (once), SIGKILL ends
    a server that ignores it, and the exit status is the server's."""
    polite = fake_server(tmp_path, name="polite")
    stubborn = fake_server(tmp_path, mode="stubborn", name="stubborn")
    for s in (polite, stubborn):
        s.start()
        s.wait_healthy(60)
    polite_pid = read_pid(tmp_path / "polite.pid")
    stubborn_pid = read_pid(tmp_path / "stubborn.pid")
    polite.stop(grace_s=60)
    assert polite.proc.returncode == -signal.SIGTERM  # type: ignore[union-attr]
    assert not alive(polite_pid)
    stubborn.stop(grace_s=0.5)
    assert (tmp_path / "stubborn.pid.term").read_text() == "TERM\n"  # not forwarded twice
    assert stubborn.proc.returncode == -signal.SIGKILL  # type: ignore[union-attr]
    assert wait_for(lambda: not alive(stubborn_pid))
    stubborn.stop()  # idempotent


# --------------------------------------------------------------------------- second signal


@pytest.mark.integration
@pytest.mark.timeout(180)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_during_stop_kills_every_server(tmp_path: Path, sig: int) -> None:
    """The first signal starts the orderly stop, which waits on a server ignoring SIGTERM; the
    second must SIGKILL both servers (the one being stopped and the one not reached yet)."""
    parent = spawn(PARENT_SERVING, tmp_path)
    try:
        assert parent.stdout.readline().strip() == "ready"  # type: ignore[union-attr]
        servers = [read_pid(tmp_path / f"fake{i}.pid") for i in range(2)]
        parent.send_signal(sig)
        # stop() has sent the first server its SIGTERM and waits (grace 600 s) for it to exit.
        assert wait_for(lambda: (tmp_path / "fake0.pid.term").exists(), 60)
        assert not (tmp_path / "fake1.pid.term").exists()
        parent.send_signal(sig)
        parent.wait(60)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(30)
    try:
        assert parent.returncode != 0
        assert wait_for(lambda: not any(alive(p) for p in servers)), (
            f"left running by an interrupted stop: {[p for p in servers if alive(p)]}"
        )
    finally:
        kill_leftovers(servers)


# --------------------------------------------------------------------------- merge


EXITS_WITH_PARENT = textwrap.dedent("""
    import subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", (
        "import os, sys, time\\n"
        "from agora_cli.serving.guard import exit_with_parent\\n"
        "exit_with_parent(int(sys.argv[1]))\\n"
        "print(os.getpid(), flush=True)\\n"
        "time.sleep(600)\\n"
    ), str(__import__('os').getpid())], stdout=sys.stdout)
    time.sleep(600)
""")


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_exit_with_parent_ends_a_child_of_a_killed_parent(tmp_path: Path) -> None:
    """What the merge child runs (`merge.py __main__`): it must not outlive a killed agora."""
    parent = spawn(EXITS_WITH_PARENT)
    try:
        child = int(parent.stdout.readline())  # type: ignore[union-attr, arg-type]
        assert alive(child)
    finally:
        parent.kill()
        parent.wait(30)
    try:
        assert wait_for(lambda: not alive(child))
    finally:
        kill_leftovers([child])


@pytest.mark.integration
def test_a_killed_merges_temporary_directory_is_removed(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    dead = int(done.stdout)
    stale = tmp_path / f".v1.tmp-{dead}-abc"
    running = tmp_path / f".v2.tmp-{os.getpid()}-xyz"
    finished = tmp_path / "v1"
    for d in (stale, running, finished):
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"0" * 16)
    _remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([running.name, "v1"])


# --------------------------------------------------------------------------- real server


SWAP_THEN_WAIT = textwrap.dedent("""
    import sys, threading, time
    from pathlib import Path
    from agora_cli.config import config_from_dict
    from agora_cli.paths import RunPaths
    from agora_cli.serving import Serving
    from agora_cli.serving.process import http
    from tests.test_serving_transformers import random_lora, smol_config

    root = Path(sys.argv[1])
    serving = Serving(config_from_dict(smol_config()), RunPaths(root / "run"))
    serving.start()
    adapter = random_lora(Path(serving.endpoint("smol-b").model), root / "adapter")
    swap = threading.Thread(target=serving.activate, args=("smol-a", adapter, 1))
    swap.start()
    swap.join()
    while Path(f"/proc/self/task/{swap.native_id}").exists():
        time.sleep(0.1)
    ep = serving.endpoint("smol-a")
    body = {"model": ep.model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    reply = http("POST", f"{ep.base_url}/chat/completions", body, timeout=120)
    print("ready", reply.status, ep.model, flush=True)
    time.sleep(600)
""")


def descendants(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            out += [int(child), *descendants(int(child))]
    return out


@pytest.mark.e2e
@pytest.mark.timeout(400)
def test_real_swapped_in_server_outlives_its_thread_and_not_a_killed_parent(
    tmp_path: Path,
) -> None:
    parent = spawn(SWAP_THEN_WAIT, tmp_path)
    procs: list[int] = []
    try:
        line = parent.stdout.readline().split()  # type: ignore[union-attr]
        assert line[:2] == ["ready", "200"], line
        merged = line[2]
        assert merged.endswith("merged/smol-a/v1")
        procs = descendants(parent.pid)
        cmdlines = [Path(f"/proc/{p}/cmdline").read_text().replace("\0", " ") for p in procs]
        serving = [c for c in cmdlines if "transformers.cli.transformers serve" in c and "guard.py" not in c]
        # The base server (smol-b still uses it) and the swapped-in one, launched by the thread.
        assert any(f" serve {merged} " in c for c in serving), cmdlines
        assert len(serving) == 2, cmdlines
    finally:
        parent.kill()
        parent.wait(30)
    try:
        assert wait_for(lambda: not any(alive(p) for p in procs), 60), (
            f"left running: {[p for p in procs if alive(p)]}"
        )
    finally:
        kill_leftovers(procs)
