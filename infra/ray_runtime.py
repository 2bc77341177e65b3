"""Connecting to Ray: the cluster at RAY_ADDRESS, or a local instance of our own.

`ray.init()` with no address joins any Ray instance already running on the machine (seen here:
"Found multiple active Ray instances"); we start a private one with address="local" instead,
unless RAY_ADDRESS names a cluster (REFERENCE.md, Ray facts that bite).
"""

from __future__ import annotations

import logging
import os

from pipelines.errors import UserError

log = logging.getLogger(__name__)


def init_ray(*, num_cpus: int | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    try:
        if address:
            ray.init(address=address, log_to_driver=True)
        else:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False)
    except ConnectionError as err:
        raise UserError(f"cannot reach the Ray cluster at RAY_ADDRESS={address}: {err}; unset RAY_ADDRESS for a local Ray") from None
    log.info("Ray: %s", address or f"local instance ({int(ray.cluster_resources().get('CPU', 0))} CPUs)")


def alive_nodes() -> int:
    """Nodes of the connected Ray cluster that are alive now."""
    import ray

    return sum(1 for node in ray.nodes() if node.get("Alive"))
