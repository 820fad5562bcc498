"""A Ray cluster of two simulated nodes on this machine (`ray.cluster_utils.Cluster`: a head and a
second raylet, each with its own object store), for the tests of replicas, delivery and training
placed by Ray. `RAY_ADDRESS` (what `cluster.address: auto` finds) and any `env` given are set while
it lives and restored after."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import ray
from ray.cluster_utils import Cluster


@contextmanager
def two_simulated_nodes(num_cpus: int = 1, env: dict[str, str] | None = None) -> Iterator[Cluster]:
    """`num_cpus` logical CPUs per node (a replica's or a task's bundle holds one). No dashboard:
    another Ray cluster on the machine holding its port would add a minute to the start."""
    env = dict(env or {})
    saved = {k: os.environ.get(k) for k in [*env, "RAY_ADDRESS"]}
    os.environ.update(env)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": num_cpus, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=num_cpus)
        os.environ["RAY_ADDRESS"] = cluster.address
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
