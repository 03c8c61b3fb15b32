"""The facility: its state folder, ``casa.toml`` parsed once, and its issuer's client.

What every command, service and notebook opens first; everything else receives it.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from casa.auth.accounts import current_account
from casa.auth.issuer_client import SOCKET_NAME, request_token
from casa.config import FacilityConfig, FacilityPaths, facility_paths, load_config
from casa.data.catalog import DatasetCatalog
from casa.data.exports import ExportedCatalog, facility_catalog
from casa.data.storage import FacilityStorage


@dataclass(frozen=True)
class Facility:
    """One facility as every command, service and notebook sees it: its state folder, its
    ``casa.toml`` (parsed once, by :func:`facility_context`) and its issuer."""

    config: FacilityConfig
    paths: FacilityPaths
    config_file: Path | None = None

    def service_dir(self, name: str) -> Path:
        """``$CASA_HOME/services/NAME``: generated configuration, log and PID file."""
        return self.paths.services / name

    @property
    def as_root(self) -> bool:
        """Whether the facility runs as root (daemons then drop to their own accounts)."""
        return os.geteuid() == 0

    def daemon_account(self) -> pwd.struct_passwd | None:
        """The account XRootD runs as under root, or None when casa is not root."""
        if not self.as_root:
            return None
        return pwd.getpwnam(self.config.xrootd.user)

    def catalog(self) -> DatasetCatalog | ExportedCatalog:
        """The dataset catalog; every change rewrites what notebooks read of it. For one of
        the facility's users (not its admin), the datasets they may read, read only."""
        if not self.paths.run_by_caller():
            return ExportedCatalog(self.paths, current_account())
        return facility_catalog(self.paths)

    def storage(self) -> FacilityStorage:
        """Facility storage, its files owned by the XRootD account under root."""
        account = self.daemon_account()
        return FacilityStorage(
            self.paths.storage,
            cache_url=self.config.cache_url() + "/",
            owner=(account.pw_uid, account.pw_gid) if account else None,
        )

    @property
    def issuer_socket(self) -> Path:
        """Where the issuer listens for token requests."""
        return self.service_dir("issuer") / SOCKET_NAME

    def request_token(
        self, user: str | None = None, scopes: list[str] | None = None,
        lifetime: int | None = None, kind: str = "data",
    ) -> str:  # fmt: skip
        """A token from this facility's issuer (:func:`casa.auth.issuer_client.request_token`)."""
        return request_token(self.issuer_socket, user, scopes, lifetime, kind)


def facility_context(
    home: str | os.PathLike | None = None, config_file: str | os.PathLike | None = None
) -> Facility:
    """The configuration and paths of the facility chosen by ``--home``/``$CASA_HOME``."""
    paths = facility_paths(home).ensure()
    config = load_config(paths, config_file)
    return Facility(config, paths, Path(config_file).absolute() if config_file else None)


def refusal_explainer(ctx: Facility):
    """A function saying why this facility's storage refused a path to the caller's token."""
    from casa.auth.tokens import discover_token, explain_refusal

    try:
        pem = (ctx.paths.keys / "issuer.pub.pem").read_bytes()
    except OSError:  # a user's account may not enter keys/: explain without the signature
        pem = None

    def explain(path: str) -> str:
        return explain_refusal(
            discover_token(), path, issuer=ctx.config.issuer_url, public_key_pem=pem,
            audience=ctx.config.facility.name,
        )  # fmt: skip

    return explain
