"""Storage's spelling of names, the issuer's closed scopes and casa's words for a refused read.

Tokens here are minted by the real ``TokenIssuer`` with a key made for the test; the storage
servers' side of the same rules is in tests/services/test_prefix_names.py.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from casa.auth.tokens import (
    DiscoveredToken,
    TokenIssuer,
    default_scopes,
    ensure_signing_key,
    explain_refusal,
    public_key_pem,
    scope_covers,
)
from casa.config import parse_config
from casa.data.catalog import DatasetCatalog
from casa.data.files import FileInfo, inspect_root_file
from casa.data.storage import FacilityStorage, migrate_layout
from casa.errors import DataError, UsageError
from casa.names import close_scope, dataset_area, storage_path
from casa.services.issuer.service import _mint_for_peer

ISSUER = "https://127.0.0.1:1/casa"


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    private = ensure_signing_key(tmp_path_factory.mktemp("keys"))
    return TokenIssuer(private, ISSUER, "casa"), public_key_pem(private)


def _explain(token: str, path: str, keys, source: str = "/tmp/bt_test") -> str:
    return explain_refusal(
        DiscoveredToken(token, source), path, issuer=ISSUER, public_key_pem=keys[1],
        audience="casa",
    )  # fmt: skip


def _signed(keys, **claims) -> str:
    """A token signed by the facility's key with exactly ``claims`` (some left out on purpose)."""
    import jwt

    return jwt.encode(claims, keys[0]._key, algorithm="ES256", headers={"kid": "casa-1"})


# -- the layout ----------------------------------------------------------------------------


def test_storage_path_closes_every_name_and_only_names():
    assert storage_path("/store/data/pu") == "/store/data/pu~"
    assert storage_path("/store/user/rela") == "/store/user/rela~"
    assert storage_path("/store/user/rela/mydata/f.root") == "/store/user/rela~/mydata~/f.root"
    assert storage_path("//store/./data/pu/") == "/store/data/pu~"
    assert storage_path("/store/data/pu~/f.root") == "/store/data/pu~/f.root"  # idempotent
    assert storage_path("/store/data") == "/store/data"
    with pytest.raises(UsageError, match="'..'"):
        storage_path("/store/user/rela/../relab")


def test_no_default_scope_is_a_string_prefix_of_another_users_paths():
    """What XRootD 5.5.3 does with a scope: grant every path that starts with it."""
    names = ["re", "rela", "relab", "rela-b", "rela.b", "rela_b"]
    for user in names:
        own = [s.partition(":")[2] for s in default_scopes(user)][1]
        for other in names:
            theirs = storage_path(f"/store/user/{other}/ds/f.root")
            assert theirs.startswith(own) == (user == other), (user, other)
    for scope, dataset in (("pu", "pub"), ("pub", "pu"), ("pu", "pu.b"), ("pu", "pu-b")):
        rule = close_scope(f"storage.read:/store/data/{scope}").partition(":")[2]
        assert not storage_path(f"/store/data/{dataset}/f.root").startswith(rule)
        assert storage_path(f"/store/data/{scope}/f.root").startswith(rule)


def test_close_scope_refuses_what_no_terminator_can_close():
    assert close_scope("storage.read:/store/user/rela/") == "storage.read:/store/user/rela~"
    assert close_scope("compute.create") == "compute.create"
    assert close_scope("storage.read:/") == "storage.read:/"
    with pytest.raises(UsageError, match="names a file"):
        close_scope("storage.read:/store/data/pu/f.root")
    with pytest.raises(UsageError, match="outside facility storage"):
        close_scope("storage.read:/etc")
    with pytest.raises(UsageError, match="cannot name a folder"):
        close_scope("storage.read:/store/user/re~la")


def test_storage_refuses_names_that_are_not_names(tmp_path):
    storage = FacilityStorage(tmp_path, "root://h:1/")
    for user in ("..", "", "a/b", "re~", ".hidden"):
        with pytest.raises(UsageError, match="cannot name a folder in facility storage"):
            storage.area("d", user)
    assert storage.area("d", "relab") == "/store/user/relab~/d~"
    assert dataset_area("d", ["root://h:1//store/user/relab~/d~/a.root"]) == "/store/user/relab~/d~"
    assert dataset_area("d", ["root://h:1//store/user/relab~/other~/a.root"]) is None
    assert dataset_area("d", ["/local/a.root"]) is None


def test_issuer_closes_every_scope_it_mints(keys):
    config = parse_config({})
    uid = os.geteuid()  # the facility's own account: may ask for any user and scope
    answer = _mint_for_peer(
        keys[0], config, uid, {"user": "rela", "scopes": ["storage.read:/store/data/pu"]}
    )
    assert _claims(answer["token"])["scope"] == "storage.read:/store/data/pu~"
    answer = _mint_for_peer(keys[0], config, uid, {"user": "rela"})
    assert _claims(answer["token"])["scope"] == (
        "storage.read:/store/data storage.read:/store/user/rela~"
    )
    refused = _mint_for_peer(
        keys[0], config, uid, {"user": "rela", "scopes": ["storage.read:/store/data/pu/f.root"]}
    )
    assert "names a file" in refused["error"] and "token" not in refused


def _claims(token: str) -> dict:
    from casa.auth.tokens import unverified_claims

    return unverified_claims(token)


def test_scope_covers_agrees_with_the_storage_on_the_layout():
    mine = "storage.read:/store/data storage.read:/store/user/rela~"
    assert scope_covers(mine, "/store/user/rela~/d~/f.root")
    assert scope_covers(mine, "/store/user/rela/d/f.root")  # a person's spelling of the same
    assert not scope_covers(mine, "/store/user/relab~/d~/f.root")
    assert not scope_covers("storage.read:/store/data/pu~", "/store/data/pub~/f.root")
    # A token minted before the layout: XRootD 5.5.3 lets it through, and so does casa's
    # explanation (it never claims a refusal the storage does not make).
    assert scope_covers("storage.read:/store/user/rela", "/store/user/relab~/d~/f.root")


# -- moving old storage to the layout ------------------------------------------------------


def test_migration_renames_folders_and_rewrites_the_catalog_together(tmp_path):
    root = tmp_path / "storage"
    for old in ("store/data/pu/a.root", "store/user/rela/d/b.root", "store/user/relab/d/c.root"):
        (root / old).parent.mkdir(parents=True, exist_ok=True)
        (root / old).write_bytes(b"root")
    catalog = DatasetCatalog(tmp_path / "casa.sqlite")
    cache = "root://127.0.0.1:9"
    catalog.add_files("pu", [FileInfo(f"{cache}//store/data/pu/a.root", "Events", 1, 4)])
    catalog.add_files("d", [FileInfo(f"{cache}//store/user/rela/d/b.root", "Events", 1, 4)])
    catalog.add_files("elsewhere", [FileInfo("root://cms.org//store/data/pu/a.root", "E", 1, 4)])

    def failing(rewrite):
        raise RuntimeError("the catalog is locked")

    with pytest.raises(RuntimeError):
        migrate_layout(root, failing, (cache,))
    assert (root / "store/user/rela/d/b.root").exists(), "a failed migration renames nothing"

    renamed = migrate_layout(root, catalog.rewrite_urls, (cache,))
    assert len(renamed) == 5
    assert (root / "store/user/rela~/d~/b.root").exists()
    assert (root / "store/user/relab~/d~/c.root").exists()
    assert [f.url for f in catalog.get("d").files] == [f"{cache}//store/user/rela~/d~/b.root"]
    assert [f.url for f in catalog.get("pu").files] == [f"{cache}//store/data/pu~/a.root"]
    assert [f.url for f in catalog.get("elsewhere").files] == [
        "root://cms.org//store/data/pu/a.root"
    ]
    assert (
        migrate_layout(root, catalog.rewrite_urls, (cache,)) == []
    )  # done once, nothing left to do
    catalog.close()


def test_set_aside_and_put_back_lose_nothing(tmp_path):
    storage = FacilityStorage(tmp_path, "root://h:1/")
    folder = storage.folder("/store/data/pu~")
    folder.mkdir(parents=True)
    (folder / "a.root").write_bytes(b"root")
    aside = storage.set_aside("/store/data/pu~")
    assert not folder.exists() and (aside / "a.root").exists()
    storage.put_back("/store/data/pu~")
    assert (folder / "a.root").read_bytes() == b"root"
    # A removal cut short after the rename is finished by the next one.
    storage.set_aside("/store/data/pu~")
    assert storage.set_aside("/store/data/pu~") == aside


# -- explanations --------------------------------------------------------------------------


def test_wrong_audience_and_gateway_tokens_are_named(keys):
    path = "/store/data/pu~/a.root"
    other = keys[0].mint("rela", default_scopes("rela"), 600, audience="another-site")
    assert "is for the audience 'another-site', not this facility's storage ('casa')" in (
        _explain(other, path, keys)
    )
    gateway = keys[0].mint("rela", ["compute.create"], 600, audience="casa-gateway")
    assert "is a gateway token (audience 'casa-gateway'), not a data token" in (
        _explain(gateway, path, keys)
    )


def test_tokens_missing_claims_are_named(keys):
    now = int(time.time())
    base = {"iss": ISSUER, "aud": "casa", "sub": "rela", "exp": now + 600,
            "scope": "storage.read:/store/data"}  # fmt: skip
    no_exp = _signed(keys, **{k: v for k, v in base.items() if k != "exp"})
    assert "has no expiry ('exp' claim)" in _explain(no_exp, "/store/data/x~/a", keys)
    no_sub = _signed(keys, **{k: v for k, v in base.items() if k != "sub"})
    assert "has no 'sub' claim" in _explain(no_sub, "/store/data/x~/a", keys)
    no_scope = _signed(keys, **{k: v for k, v in base.items() if k != "scope"})
    assert "has no 'scope' claim" in _explain(no_scope, "/store/data/x~/a", keys)
    later = _signed(keys, **{**base, "nbf": now + 3600})
    assert "is not valid before" in _explain(later, "/store/data/x~/a", keys)
    for token in (no_exp, no_sub, no_scope, later):
        assert "looks valid" not in _explain(token, "/store/data/x~/a", keys)
    fine = _signed(keys, **base)
    assert "looks valid" in _explain(fine, "/store/data/x~/a", keys)


def test_a_garbage_token_names_its_file(keys, tmp_path):
    for garbage in ("not-a-token", "a.b.c", "x.bnVsbA.y"):  # the last one's claims are 'null'
        message = _explain(garbage, "/store/data/x~/a", keys, source=str(tmp_path / "bt"))
        assert f"the bearer token from {tmp_path / 'bt'} is not a JWT" in message


def test_prefix_scope_refusal_is_explained_as_no_scope(keys):
    rela = keys[0].mint("rela", default_scopes("rela"), 600)
    message = _explain(rela, "/store/user/relab~/d~/f.root", keys)
    assert "(for 'rela') has no scope to read /store/user/relab~/d~/f.root" in message


# -- what a file holds -----------------------------------------------------------------------


def test_missing_tree_names_the_trees_and_rntuples_the_file_holds(tmp_path):
    import uproot

    with uproot.recreate(tmp_path / "ttree.root") as f:
        f.mktree("Other", {"x": "f8"}).extend({"x": np.arange(3.0)})
    with uproot.recreate(tmp_path / "rntuple.root") as f:
        f["Other"] = {"x": np.arange(3.0)}
    with uproot.recreate(tmp_path / "none.root") as f:
        f["note"] = "hello"
    expected = {
        "ttree.root": "it holds the TTree Other; choose one with --tree",
        "rntuple.root": "it holds the RNTuple Other; choose one with --tree",
        "none.root": "it holds no tree (its objects: note (TObjString))",
    }
    for name, words in expected.items():
        with pytest.raises(DataError) as caught:
            inspect_root_file(Path(tmp_path / name), "Events")
        assert f"has no tree 'Events': {words}" in str(caught.value)
