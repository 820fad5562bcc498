"""The test tiers themselves (tests/conftest.py): planted tests run through the suite's own conftest
and pytest settings, in this process (`pytester.runpytest` runs inline).

Every test needs exactly one of `unit`, `integration`, `e2e`, or collection fails naming it; a
`unit` test that starts a process or opens a socket fails with what it tried.
"""

from __future__ import annotations

import pytest

from agora_cli.paths import REPO_DIR


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    """A directory with the suite's conftest hooks and pyproject's pytest settings."""
    pytester.makeconftest("from tests.conftest import *  # noqa: F403\n")
    pytester.makepyprojecttoml((REPO_DIR / "pyproject.toml").read_text())
    return pytester


@pytest.mark.unit
def test_a_test_without_a_tier_or_with_two_fails_collection_by_name(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_planted="""
        import pytest

        def test_untiered():
            pass

        @pytest.mark.unit
        @pytest.mark.integration
        def test_twice():
            pass

        @pytest.mark.unit
        def test_fine():
            pass
        """
    )
    result = suite.runpytest("-m", "unit")  # the check does not depend on what -m selects
    assert result.ret == pytest.ExitCode.INTERRUPTED  # a collection error
    err = result.stdout.str()
    assert "ERROR collecting test_planted.py" in err
    assert "test_planted.py::test_untiered: no tier" in err
    assert "test_planted.py::test_twice: integration, unit" in err
    assert "test_fine" not in err
    assert "Interrupted: 1 error during collection" in err


# (what a planted unit test does, what the failure must say it tried)
LEAVING = [
    ("subprocess.run(['true'])", "to start a process: subprocess.Popen(['true'])"),
    ("os.system('true')", "to start a process: os.system('true')"),
    ("os.fork()", "to start a process: os.fork()"),
    (
        "multiprocessing.get_context('spawn').Process(target=print).start()",
        "to start a process: multiprocessing SpawnProcess.start()",
    ),
    # its queues' semaphores start multiprocessing's resource tracker before any worker
    ("concurrent.futures.ProcessPoolExecutor(1).submit(print).result()", "to start a process: "),
    ("asyncio.run(asyncio.create_subprocess_exec('true'))", "asyncio.create_subprocess_exec('true')"),
    ("socket.create_connection(('127.0.0.1', 9))", "network socket: socket.connect(('127.0.0.1', 9))"),
    ("socket.socket().bind(('127.0.0.1', 0))", "to open a network socket: socket.bind(('127.0.0.1', 0))"),
]


@pytest.mark.unit
def test_a_unit_test_that_leaves_the_process_fails_naming_what_it_tried(suite: pytest.Pytester) -> None:
    """One inline session (each costs a second): the planted tests below, a module-level tier, a
    refusal the code catches, a thread, a fixture, and a misspelt marker."""
    leaving = "".join(
        f"@pytest.mark.unit\ndef test_leaves_{i}():\n    {body}\n\n\n" for i, (body, _) in enumerate(LEAVING)
    )
    suite.makepyfile(
        test_planted="import asyncio, concurrent.futures, multiprocessing, os, socket, subprocess\n"
        "import threading\nimport pytest\n\nBIND = socket.socket.bind  # as collection found it\n\n"
        + leaving
        + """
@pytest.mark.unit
def test_falls_back():
    try:
        subprocess.run(["true"])
    except Exception:
        pass


@pytest.mark.unit
def test_in_a_thread():
    def serve():
        try:
            socket.socket().bind(("127.0.0.1", 0))
        except Exception:
            pass

    t = threading.Thread(target=serve)
    t.start()
    t.join()


@pytest.fixture
def server():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    yield s
    s.close()


@pytest.mark.unit
def test_uses_a_server(server):
    pass


@pytest.mark.unit
def test_stays_in_process():
    assert sum(range(4)) == 6


@pytest.mark.integration
def test_after_the_unit_tests_the_guard_is_lifted():
    assert socket.socket.bind is BIND
""",
        test_module="""
import pytest

pytestmark = pytest.mark.unit


def test_from_the_module():
    pass


@pytest.mark.unit
def test_the_modules_tier_again():  # still one tier
    pass
""",
        test_typo="""
import pytest


@pytest.mark.unit
@pytest.mark.unti
def test_typo():
    pass
""",
    )
    rec = suite.inline_run("--continue-on-collection-errors")
    failed = {
        r.nodeid.split("::")[1]: r.longreprtext
        for r in rec.getreports("pytest_runtest_logreport")
        if r.failed
    }
    passed = {
        r.nodeid.split("::")[1]
        for r in rec.getreports("pytest_runtest_logreport")
        if r.passed and r.when == "call"
    }
    assert passed == {
        "test_stays_in_process",
        "test_after_the_unit_tests_the_guard_is_lifted",
        "test_from_the_module",
        "test_the_modules_tier_again",
    }
    assert set(failed) == {f"test_leaves_{i}" for i in range(len(LEAVING))} | {
        "test_falls_back",
        "test_in_a_thread",
        "test_uses_a_server",  # in its setup
    }
    for i, (_, tried) in enumerate(LEAVING):
        name = f"test_leaves_{i}"
        assert f"test_planted.py::{name} is a unit test (in process only) but tried" in failed[name]
        assert tried in failed[name], failed[name]
    assert "tried to start a process: subprocess.Popen(['true'])" in failed["test_falls_back"]
    assert "(the code caught the refusal)" in failed["test_falls_back"]
    assert "tried to open a network socket: socket.bind" in failed["test_in_a_thread"]
    assert "tried to open a network socket: socket.bind" in failed["test_uses_a_server"]
    [typo] = rec.getfailedcollections()
    assert "'unti' not found in `markers`" in typo.longreprtext  # --strict-markers from pyproject


@pytest.mark.integration
def test_the_other_tiers_may_start_processes_and_open_sockets(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_planted="""
        import socket, subprocess
        import pytest

        def leave():
            assert subprocess.run(["true"]).returncode == 0
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))

        @pytest.mark.integration
        def test_integration():
            leave()

        @pytest.mark.e2e
        def test_e2e():
            leave()
        """
    )
    result = suite.runpytest()
    result.assert_outcomes(passed=2)
