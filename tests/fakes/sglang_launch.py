"""`python -m tests.fakes.sglang_launch ARGS`: the fake SGLang server as a process, launched the way
agora launches `python -m sglang.launch_server ARGS`.

It reads what SGLang 0.5.23 reads of agora's command line: `--model-path`, `--port`, and the
`--config` YAML file whose entries become flags spelled as written (`srt/utils/
server_args_config_parser.py`: `api-key` is `--api-key`, and `api_key` an unknown `--api_key`
that stops the server); then, as SGLang does at start, it prints its `server_args` with the
key in them, and serves (every route but /health* wants the key) until SIGTERM.

Two variables stand in for a node's view of the world: `FAKE_SGLANG_UNREADABLE` (folders, joined
by os.pathsep, whose files this server cannot read, as the driver's disk is to a server on another
node: a `--config` or a load from under one fails as a missing path does) and
`FAKE_SGLANG_LOAD_DELAY_S` (each load takes that long).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

import yaml

from tests.fakes.sglang_server import FakeSGLang


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model-path", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--config")
    p.add_argument("--api-key")
    args, _ = p.parse_known_args(argv)
    unreadable = [u for u in os.environ.get("FAKE_SGLANG_UNREADABLE", "").split(os.pathsep) if u]
    if args.config and any(os.path.realpath(args.config).startswith(os.path.realpath(u)) for u in unreadable):
        sys.exit(f"sglang serve: error: [Errno 2] No such file or directory: {args.config!r}")
    if args.config:  # entries first, so the command line wins, as in SGLang
        with open(args.config) as f:
            entries = yaml.safe_load(f) or {}
        flags = [x for k, v in entries.items() for x in (f"--{k}", str(v))]
        unknown = [f for f in flags[::2] if f != "--api-key"]
        if unknown:
            sys.exit(f"sglang serve: error: unrecognized arguments: {' '.join(unknown)}")
        args = p.parse_known_args(flags + argv)[0]
    print(f"server_args=ServerArgs(model_path={args.model_path!r}, api_key={args.api_key!r})", flush=True)
    fake = FakeSGLang(args.model_path, api_key=args.api_key, port=args.port)
    fake.unreadable = unreadable
    fake.load_delay_s = float(os.environ.get("FAKE_SGLANG_LOAD_DELAY_S", "0"))
    fake.start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main(sys.argv[1:])
