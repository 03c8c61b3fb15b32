"""Names: one rule per kind of name, and every place that checks one of them uses it."""

from __future__ import annotations

import os

import pytest

from casa.auth.accounts import AccountStore
from casa.data.catalog import DatasetCatalog
from casa.errors import UsageError
from casa.names import check_dataset_name, check_storage_name, check_user_name
from casa.services.issuer.service import _mint_for_peer

USERS_OK = ["ann", "a", "relab2", "first-last", "first_last", "a" * 32]
#: Refused by the user rule; the issuer once took the first four.
USERS_BAD = ["first.last", "Ann", "2ann", "_ann", "", "a" * 33, "ännä", "-ann", "a b", "a/b"]

DATASETS_OK = ["demo", "x.y_1-2", "_x", "2026", "Run2.v1"]
#: Refused by the dataset rule; the catalog once took the first two.
DATASETS_BAD = ["-x", "münchen", ".x", "", "a b", "a/b", "a~", ".."]


@pytest.mark.parametrize("name", USERS_OK)
def test_user_names_that_are_accounts_and_folders(name):
    assert check_user_name(name) == name
    assert check_storage_name(name, "user name") == name  # each one names its storage area


@pytest.mark.parametrize("name", USERS_BAD)
def test_other_user_names_are_refused_in_one_sentence(name):
    with pytest.raises(UsageError, match="is not valid: use 1-32 lower-case letters"):
        check_user_name(name)


@pytest.mark.parametrize("name", DATASETS_OK)
def test_dataset_names_that_name_folders(name):
    assert check_dataset_name(name) == name
    assert check_storage_name(name) == name  # each one can be stored under its name


@pytest.mark.parametrize("name", DATASETS_BAD)
def test_other_dataset_names_are_refused_in_one_sentence(name):
    with pytest.raises(UsageError, match="dataset name .* is not valid"):
        check_dataset_name(name)


def test_accounts_the_issuer_and_the_catalog_refuse_what_cannot_be_theirs(tmp_path):
    accounts = AccountStore(tmp_path / "casa.sqlite")
    catalog = DatasetCatalog(tmp_path / "catalog.sqlite")
    try:
        for name in ("first.last", "Ann", "a" * 33):
            with pytest.raises(UsageError, match="user name .* is not valid"):
                accounts.add(name, "a long enough password")
        # The facility's own account may ask for any user's token, but not for names that
        # cannot be a storage folder (a site's first.last can: OpenID Connect accounts).
        for name in ("../x", "a/b", "ann~", ".hidden", "ännä"):
            answer = _mint_for_peer(None, None, os.geteuid(), {"user": name})
            assert set(answer) == {"error"} and "cannot name a folder" in answer["error"], name
        for name in ("-x", "münchen"):
            with pytest.raises(UsageError, match="dataset name .* is not valid"):
                catalog.add(name, [str(tmp_path)])
            with pytest.raises(UsageError, match="dataset name .* is not valid"):
                catalog.import_fileset({name: [str(tmp_path / "f.root")]})
        assert accounts.list() == [] and catalog.list() == []
    finally:
        catalog.close()


def test_the_issuer_mints_for_a_sites_dotted_account(tmp_path):
    """OpenID Connect logs in a site's own accounts; first.last gets its own area only."""
    from casa.auth.tokens import TokenIssuer, ensure_signing_key, unverified_claims
    from casa.config import FacilityConfig

    issuer = TokenIssuer(ensure_signing_key(tmp_path / "keys"), "https://t/casa", "casa")
    answer = _mint_for_peer(issuer, FacilityConfig(), os.geteuid(), {"user": "first.last"})
    claims = unverified_claims(answer["token"])
    assert claims["sub"] == "first.last"
    assert "storage.read:/store/user/first.last~" in claims["scope"].split()
