"""A Dask preload (``--preload casa.worker.dashboard_preload``): guards the process's HTTP servers.

distributed imports preload modules while it parses the command line (and a scheduler
opens its HTTP port before preloads' ``dask_setup`` runs), so the guard is installed on
import: from then on every HTTP server of the scheduler or worker answers 403 to a
request without the cluster's key (:mod:`casa.worker.dashboard_guard`).
"""

from casa.worker.dashboard_guard import guard_http_servers

guard_http_servers()


def dask_setup(server) -> None:
    """Nothing left to do: the guard is in place since this module was imported."""
