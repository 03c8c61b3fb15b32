"""Workers' data tokens renewed from the client (HTCondor and Slurm runs), on a real cluster.

A real Dask cluster (scheduler and worker processes, TLS like the job backends) and tokens
signed with a real facility key; the HTCondor and Slurm backends wrap their clients in the
same :class:`TokenRenewer`.
"""

from __future__ import annotations

import time

import pytest

from casa.auth.tokens import TokenIssuer, ensure_signing_key, unverified_claims
from casa.compute.tls import write_cluster_certificate
from casa.worker.token import TokenRenewer, lifetime_of, renewal_period


def _worker_subs_and_expiry(client) -> set[tuple[str, int]]:
    tokens = client.run(lambda: __import__("os").environ.get("BEARER_TOKEN"))
    return {(unverified_claims(t)["sub"], unverified_claims(t)["exp"]) for t in tokens.values()}


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory):
    from distributed import Client, LocalCluster

    tls = write_cluster_certificate(tmp_path_factory.mktemp("tls"))
    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=True,
            protocol="tls://",
            security=tls.security(),
            dashboard_address=None,
        ) as cluster,  # fmt: skip
        Client(cluster, security=tls.security()) as client,
    ):
        yield cluster, client


def test_renewer_gives_workers_newer_tokens_including_workers_that_join_later(
    tls_cluster, tmp_path
):
    cluster, client = tls_cluster
    issuer = TokenIssuer(ensure_signing_key(tmp_path / "keys"), "https://t/casa", "casa")
    minted: list[str] = []

    def source() -> str:
        minted.append(issuer.mint("gwa", ["storage.read:/store/user/gwa"], 3 + len(minted)))
        return minted[-1]

    assert renewal_period(lifetime_of(issuer.mint("gwa", [], 30))) == 10
    with TokenRenewer(client, source, period=0.5):
        deadline = time.time() + 20
        while time.time() < deadline and len(minted) < 3:
            time.sleep(0.1)
    assert len(minted) >= 3, "the renewer did not renew on its period"
    newest = max(unverified_claims(t)["exp"] for t in minted)
    assert _worker_subs_and_expiry(client) == {("gwa", newest)}
    # An expired token (a renewal source gone stale) is never given to the workers.
    expired = issuer.mint("gwa", [], -5)
    assert TokenRenewer(client, lambda: expired, 1).renew() is False
    assert _worker_subs_and_expiry(client) == {
        ("gwa", max(unverified_claims(t)["exp"] for t in minted))
    }
    # A worker that joins later gets the last token registered, not an empty environment.
    cluster.scale(2)
    client.wait_for_workers(2, timeout=60)
    assert {sub for sub, _ in _worker_subs_and_expiry(client)} == {"gwa"}
    assert len({exp for _, exp in _worker_subs_and_expiry(client)}) == 1
    cluster.scale(1)
