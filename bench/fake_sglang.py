"""`python -m bench.fake_sglang --latency S ARGS`: the tests' fake SGLang server as a process (launched
the way agora launches `python -m sglang.launch_server ARGS`), each chat answer delayed by S seconds,
standing in for a model's generation time so requests overlap under load (`bench_cluster.py`).
"""

from __future__ import annotations

import argparse
import functools
import sys

from tests.fakes import sglang_launch
from tests.fakes.sglang_server import FakeSGLang


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--latency", type=float, default=0.0)
    args, rest = p.parse_known_args(argv)
    # The launcher builds its server from the module's name; give that name the delay.
    sglang_launch.FakeSGLang = functools.partial(FakeSGLang, latency_s=args.latency)  # type: ignore[assignment, misc]
    sglang_launch.main(rest)


if __name__ == "__main__":
    main(sys.argv[1:])
