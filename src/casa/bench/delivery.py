"""The delivery service's figures: a skim of the bench's dataset through the service's own
API, the same request again (served from the shared cache), and uproot running the same
query on the same files on the same cores.

The ServiceX client polls every 5 s (and waits 5 s before its first look at the results),
so no ``deliver()`` returns in under about 5 s whatever the service does: the bench times
the service itself, from the request to ``Complete`` (its status asked every 50 ms), as the
client's own time would hide it, after one untimed skim with another cut (the service's
first connection to the cluster and the workers' imports).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ProcessPoolExecutor

from casa.errors import ServiceError
from casa.facility import Facility

#: The bench's skim: the muons and the missing energy of the events with two muons.
QUERY = [{"treename": "Events", "filter_name": ["MET_pt", "nMuon", "Muon_pt", "Muon_eta",
                                                 "Muon_phi"],
          "cut": "count_nonzero(Muon_pt > 20, axis=1) >= 2"}]  # fmt: skip
#: How often the bench asks a transform's status.
POLL_SECONDS = 0.05


def delivery_figures(ctx: Facility, dataset: str, paths: list[str], workers: int,
                     input_bytes: int) -> dict:  # fmt: skip
    """``{"seconds", "events_per_second", "input_mb_per_second", "cached_seconds",
    "uproot_seconds", ...}`` of one skim of ``dataset`` (whose local files are ``paths``)."""
    from casa.services.delivery.service import delivery_url

    url, token = delivery_url(ctx), ctx.request_token()
    body = {"title": "bench", "did": f"casa://{dataset}", "selection": json.dumps(QUERY),
            "codegen": "uproot-raw", "result-destination": "object-store",
            "result-format": "root-file"}  # fmt: skip
    # Untimed: the service's first connection to the cluster, the workers' imports (another
    # cut: nothing of it is cached for the timed request).
    warm_query = [{**QUERY[0], "cut": "count_nonzero(Muon_pt > 21, axis=1) >= 2"}]
    _transform(url, token, {**body, "selection": json.dumps(warm_query)})
    first, first_id = _transform(url, token, body)
    record = _call(url, token, "GET", f"/casa/transformation/{first_id}")
    events = sum(f["events"] for f in record["files"])
    cached, cached_id = _transform(url, token, body)
    again = _call(url, token, "GET", f"/casa/transformation/{cached_id}")
    uproot_seconds, uproot_events = _uproot_skims(paths, workers)
    if uproot_events != events:
        raise ServiceError(
            f"the delivery skim kept {events:,} events and uproot {uproot_events:,}: they must agree"
        )
    total_events = sum(_entries(p) for p in paths)
    return {
        "seconds": first, "cached_seconds": cached, "files": len(paths),
        "events_read": total_events, "events_kept": events,
        "events_per_second": total_events / first,
        "input_mb_per_second": input_bytes / first / 1e6,
        "served_from_cache": again["from_cache"], "transformed_when_cached": again["transformed"],
        "uproot_seconds": uproot_seconds,
        "uproot_events_per_second": total_events / uproot_seconds,
        "delivery_over_uproot": uproot_seconds / first, "workers": workers,
        "query": QUERY,
    }  # fmt: skip


def _transform(url: str, token: str, body: dict) -> tuple[float, str]:
    """Seconds from the request to ``Complete``, and the request id."""
    began = time.perf_counter()
    request_id = _call(url, token, "POST", "/servicex/transformation", body)["request_id"]
    deadline = time.monotonic() + 600
    while True:
        status = _call(url, token, "GET", f"/servicex/transformation/{request_id}")
        if status["status"] == "Complete":
            if status["files-failed"]:
                raise ServiceError(f"the bench's skim failed on {status['files-failed']} file(s)")
            return time.perf_counter() - began, request_id
        if status["status"] in ("Fatal", "Canceled") or time.monotonic() > deadline:
            raise ServiceError(f"the bench's skim ended {status['status']}: {status.get('error')}")
        time.sleep(POLL_SECONDS)


def _call(url: str, token: str, method: str, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(
        url + path, method=method, data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=300) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as e:
        raise ServiceError(f"the delivery service answered {e.code}: {e.read()[:500]!r}") from None


def _skim_events(path: str) -> int:
    from casa.worker.skim import skim_file

    return skim_file(path, QUERY, "root-file")[1]["events"]


def _entries(path: str) -> int:
    import uproot

    with uproot.open(path) as f:
        return f["Events"].num_entries


def _uproot_skims(paths: list[str], workers: int) -> tuple[float, int]:
    """The same skim with uproot, each file in one of ``workers`` processes (warmed up)."""
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_skim_events, paths[:workers]))  # imports and page cache, untimed
        began = time.perf_counter()
        events = sum(pool.map(_skim_events, paths))
        return time.perf_counter() - began, events
