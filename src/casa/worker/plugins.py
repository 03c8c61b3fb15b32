"""Registering casa's worker plugins with a Dask cluster, from the caller's side."""

from __future__ import annotations

from typing import Any


def install_worker_plugin(client: Any, plugin: Any) -> bool:
    """Register one of casa's worker plugins with a Dask cluster (its workers, and those
    that join later); False when the workers cannot load it (another casa in the workers'
    environment), so the run goes on without it."""
    try:
        client.register_plugin(plugin)
    except Exception:  # raised on the workers; no run needs a plugin to be correct
        return False
    return True
