"""A Dask cluster casa starts itself (``--executor dask``) answers the link casa prints only."""

from __future__ import annotations

import requests

from casa.compute.base import Scaling
from casa.compute.local import LocalDaskBackend
from casa.worker.dashboard_guard import KEY_PARAM


def _status(url: str, session=None) -> int:
    return (session or requests).get(url, timeout=30, allow_redirects=False).status_code


def test_local_dask_dashboard_answers_the_printed_link_only():
    with LocalDaskBackend(None, Scaling(workers=1)) as opened:
        link = opened.dashboard
        assert f"?{KEY_PARAM}=" in link
        base = link.partition("/status")[0]
        info = opened.executor.client.scheduler_info()
        worker_ports = [w["services"]["dashboard"] for w in info["workers"].values()]
        # Without the key: the scheduler's pages and every worker's HTTP port refuse.
        pages = ["status", "json/identity.json", "info/main/logs.html", "metrics", "api/v1"]
        refused = {page: _status(f"{base}/{page}") for page in pages}
        refused |= {port: _status(f"http://127.0.0.1:{port}/metrics") for port in worker_ports}
        refused["a wrong key"] = _status(f"{base}/status?{KEY_PARAM}=guess")
        assert set(refused.values()) == {403}, refused
        # The printed link: its key goes into a cookie, and the pages load.
        with requests.Session() as browser:
            opened_page = browser.get(link, timeout=30)
            assert opened_page.status_code == 200 and "bokeh" in opened_page.text
            assert KEY_PARAM not in opened_page.url  # the key left the address bar
            assert _status(f"{base}/json/identity.json", browser) == 200
