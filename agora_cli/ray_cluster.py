"""Joining the Ray cluster a config's `cluster:` section names, once per process, for the server
replicas (serving/ray_replicas.py) and the training tasks (training/ray_rounds.py) alike.
Imported only when a config has that section: nothing else imports ray."""

from __future__ import annotations

from typing import Any

import ray

NAMESPACE = "agora"  # the replicas' named actors and placement groups live here


def connect(address: str, runtime_env: dict[str, Any]) -> None:
    """Join the cluster at `address` (`auto`, or `ray://HOST:PORT`) unless this process already
    has; `runtime_env` is handed to every actor and task agora starts there."""
    if not ray.is_initialized():
        ray.init(address=address, namespace=NAMESPACE, runtime_env=runtime_env or None, log_to_driver=False)
