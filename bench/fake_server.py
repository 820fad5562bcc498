"""FakeOpenAI in its own process, so the orchestrator's CPU time is measured without the server's.

    python -m bench.fake_server --latency 0.2     # prints the base URL, serves until stdin closes

The script makes a step do all of its work: every generated problem is new, every solution is
answered and judged valid, so every pair of solutions is voted on and winners explain themselves.
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys

from bench.common import REPO, setup_env

WORDS = ["apples", "pears", "plums", "figs", "limes", "kiwis", "dates", "grapes", "melons"]


def responder():
    from tests.fakes.openai_server import Request, scripted

    counter = itertools.count()

    def generate(req: Request) -> str:
        n = next(counter)
        a, b = WORDS[n % 9], WORDS[(n * 5 + 2) % 9]
        return (
            f"Problem: Q{n} A trader holds {n + 11} {a} and {2 * n + 3} {b}, sells {n + 2} "
            f"{a} on day {n}. How many pieces of fruit remain?"
        )

    return scripted(
        {
            "generate": generate,
            "solve": f"{'We add and subtract step by step. ' * 8}So the answer is \\boxed{{7}}",
            "verify": "VALID",
            "vote": "A",
            "explain": "Track what is sold and what remains.",
            "*": "ok",
        }
    )


def serve(latency_s: float) -> None:
    setup_env()
    from tests.fakes.openai_server import FakeOpenAI

    with FakeOpenAI(responder(), latency_s=latency_s) as fake:
        print(fake.url, flush=True)
        sys.stdin.read()  # the parent closes our stdin to stop us


class FakeProcess:
    """Context manager: a fake server child process; `.url` is its base URL."""

    def __init__(self, latency_s: float):
        self.latency_s = latency_s
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def __enter__(self) -> FakeProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.fake_server", "--latency", str(self.latency_s)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http"):
            self.proc.kill()
            raise RuntimeError("the fake server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--latency", type=float, default=0.2)
    serve(ap.parse_args().latency)
