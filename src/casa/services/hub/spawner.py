"""Each user's JupyterLab, run under their own Unix account, with credentials minted at spawn.

Before the server starts, the hub (which may ask the issuer for any user) mints the user's
data token and gateway token and writes them into ``~/.casa/`` (folder 0700, files 0600,
owned by the user; see :class:`casa.filesystem.UserFolder` for why a planted link cannot
misdirect them), and the catalog of the datasets the user may read into the facility's
``services/hub/catalogs/NAME.json`` (the user's, 0600). The server's
environment points WLCG discovery, Dask Gateway and ``casa.datasets()`` at them, so
``casa.connect()``, ``dask_gateway.Gateway()`` and ``root://`` reads just work. The tokens
are renewed in place well before they expire, for as long as the server runs; the catalog
is rewritten whenever it changes (:mod:`casa.data.exports`). The server runs from the
user's own Python environment, on top of the facility's, so that what they ``pip install``
reaches their kernels, their terminal's ``casa`` and their clusters' workers
(:mod:`casa.lab.environments`).
"""

from __future__ import annotations

import asyncio
import functools
import html
import json
import os
import pwd
import time
from importlib import resources
from pathlib import Path

from jupyterhub.spawner import LocalProcessSpawner
from traitlets import Integer, Unicode, default

from casa.compute.gateway import GATEWAY_TOKEN_FILE_ENV
from casa.data.catalog import DatasetCatalog
from casa.data.exports import CatalogExports
from casa.facility import Facility, facility_context
from casa.filesystem import USER_FOLDER, UserFolder
from casa.lab.environments import (
    DEFAULT_ENV,
    FACILITY_ENV,
    check_env_name,
    create_as,
    is_layered_on,
    user_env_path,
    user_envs,
)
from casa.services.gateway.service import gateway_backend
from casa.services.hub.config import lab_config_dir, user_env_prefix

EXAMPLES_DIR = "examples"


@functools.cache
def _facility(home: str, config_file: str | None) -> Facility:
    return facility_context(home, config_file)


class CasaSpawner(LocalProcessSpawner):
    """LocalProcessSpawner plus casa's credentials, example notebooks and failure reports."""

    casa_home = Unicode(help="The facility state directory.", config=True)
    casa_config_file = Unicode("", help="casa.toml, if not in casa_home.", config=True)
    failures_file = Unicode(
        help="Where spawn failures are recorded for 'casa status'.", config=True
    )
    renew_every = Integer(
        0, help="Seconds between token renewals (0: half the token lifetime).", config=True
    )

    def _ctx(self):
        """The facility, with casa.toml parsed once per hub process (not on every spawn)."""
        return _facility(self.casa_home, self.casa_config_file or None)

    def _account(self) -> pwd.struct_passwd:
        try:
            return pwd.getpwnam(self.user.name)
        except KeyError:
            raise RuntimeError(
                f"there is no Unix account {self.user.name!r} on this machine: the facility "
                f"admin creates it with 'casa user add {self.user.name}'"
            ) from None

    def _write_credentials(self) -> dict[str, str]:
        """Mint the user's tokens and write them into ``~/.casa``."""
        ctx = self._ctx()
        account = self._account()
        data = ctx.request_token(user=self.user.name)
        gateway = ctx.request_token(user=self.user.name, kind="gateway")
        with UserFolder(account) as folder:
            written = {
                "data": str(folder.write("bearer_token", data + "\n")),
                "gateway": str(folder.write("gateway_token", gateway + "\n")),
            }
        return written

    def _write_catalog(self) -> None:
        """The public datasets and the user's own, where ``$CASA_CATALOG`` names; each
        catalog change rewrites it while the server runs (:mod:`casa.data.exports`)."""
        ctx = self._ctx()
        catalog = DatasetCatalog(ctx.paths.database)
        try:
            CatalogExports(ctx.paths).write_for(catalog, self._account())
        finally:
            catalog.close()

    def _facility_env(self) -> Path:
        return user_env_prefix(self._ctx())

    def _env_choices(self) -> list[tuple[str, str]]:
        """What the spawn page offers: the user's environments, then the facility's alone."""
        base = self._facility_env()
        names = (
            user_envs(Path(self._account().pw_dir), base) if (base / "pyvenv.cfg").exists() else []
        )
        if DEFAULT_ENV not in names:
            names.insert(0, DEFAULT_ENV)  # made at this spawn
        labels = [(n, f"{n}: yours, on the facility's" if n == DEFAULT_ENV else n) for n in names]
        return [*labels, (FACILITY_ENV, "the facility's alone, without your packages")]

    @staticmethod
    def _options_form(spawner) -> str:
        """The spawn page's choice of environment, once a user has more than one of their
        own ('casa env create'); no page otherwise (the server starts at login)."""
        try:
            choices = spawner._env_choices()
        except Exception:  # no account yet: the spawn itself says why
            return ""
        if len(choices) <= 2:
            return ""
        options = "".join(
            f'<option value="{html.escape(n)}"{" selected" if n == DEFAULT_ENV else ""}>'
            f"{html.escape(label)}</option>"
            for n, label in choices
        )
        return (
            '<label for="casa-env">Python environment your server, kernels and clusters run '
            f'from</label><select class="form-control" id="casa-env" name="env">{options}'
            "</select>"
        )

    @default("options_form")
    def _default_options_form(self):
        return CasaSpawner._options_form

    @default("apply_user_options")
    def _default_apply_user_options(self):
        # The one option, 'env', is read where the environment is chosen (_python_env).
        return lambda spawner, options: None

    def options_from_form(self, formdata):
        return {"env": (formdata.get("env") or [DEFAULT_ENV])[0]}

    def _prepare(self) -> None:
        self._write_credentials()
        self._write_catalog()
        self._env = self._python_env()

    def _python_env(self) -> Path:
        """The environment the server runs from: the user's own, on top of the facility's
        (made at their first spawn, as them), where ``pip install`` works without an admin
        (:mod:`casa.lab.environments`); the facility's when it is no virtual environment."""
        base = self._facility_env()
        choice = (self.user_options or {}).get("env") or DEFAULT_ENV
        if choice == FACILITY_ENV or not (base / "pyvenv.cfg").exists():
            return base
        try:
            check_env_name(choice)
        except ValueError as e:
            raise RuntimeError(str(e)) from None
        account = self._account()
        env = user_env_path(account, choice)
        if is_layered_on(env, base):
            return env
        if choice != DEFAULT_ENV:
            # The hub remembers the last choice: one since removed must not keep the user out.
            self.log.warning(
                "%s has no Python environment %r (any more): starting from %s",
                self.user.name, choice, DEFAULT_ENV,
            )  # fmt: skip
            env = user_env_path(account)
            if is_layered_on(env, base):
                return env
        self.log.info("Making the Python environment %s for %s", env, self.user.name)
        create_as(account, env, base)
        return env

    def _write_servicex_config(self) -> None:
        """``~/servicex.yaml`` naming this facility's delivery service, unless the user has
        one: the ServiceX client then works in the lab as it is (it sends the token of
        ``$BEARER_TOKEN_FILE``). Written under another name and renamed: never through a
        link the user planted."""
        from casa.filesystem import write_file
        from casa.services.delivery.service import delivery_url

        account = self._account()
        path = Path(account.pw_dir) / "servicex.yaml"
        if os.path.lexists(path):
            return
        text = (
            "# The ServiceX client's settings (docs/delivery.md), written once by the hub.\n"
            f"api_endpoints:\n  - endpoint: {delivery_url(self._ctx())}\n    name: casa\n"
            f"default-endpoint: casa\ncache-path: {account.pw_dir}/.cache/servicex\n"
        )
        write_file(path, text, 0o644, owner=(account.pw_uid, account.pw_gid))

    def _copy_examples(self) -> None:
        account = self._account()
        target = Path(account.pw_dir) / EXAMPLES_DIR
        if target.exists():
            return
        target.mkdir()
        source = resources.files("casa.lab") / "notebooks"
        for item in source.iterdir():
            if item.name.endswith(".ipynb"):
                (target / item.name).write_bytes(item.read_bytes())
        for path in [target, *target.iterdir()]:
            os.chown(path, account.pw_uid, account.pw_gid)

    def _record_failure(self, reason: str) -> None:
        if not self.failures_file:
            return
        path = Path(self.failures_file)
        try:
            failures = json.loads(path.read_text())
        except (OSError, ValueError):
            failures = {}
        failures[self.user.name] = {"time": time.time(), "reason": reason}
        path.write_text(json.dumps(failures, indent=1))

    def _clear_failure(self) -> None:
        path = Path(self.failures_file) if self.failures_file else None
        if path is None or not path.exists():
            return
        failures = json.loads(path.read_text() or "{}")
        if failures.pop(self.user.name, None) is not None:
            path.write_text(json.dumps(failures, indent=1))

    def get_env(self):
        """The server's environment: token locations, the gateway, the dataset catalog, the
        facility and the environment for casa in the lab's terminal."""
        env = super().get_env()
        ctx = self._ctx()
        g = ctx.config.gateway
        python_env = getattr(self, "_env", None) or user_env_prefix(ctx)
        facility_bin = user_env_prefix(ctx) / "bin"
        host = ctx.config.gateway_client_host()
        folder = Path(self._account().pw_dir) / USER_FOLDER
        env.update(
            {
                "BEARER_TOKEN_FILE": str(folder / "bearer_token"),
                GATEWAY_TOKEN_FILE_ENV: str(folder / "gateway_token"),
                "DASK_GATEWAY__ADDRESS": f"http://{host}:{g.port}",
                "DASK_GATEWAY__PROXY_ADDRESS": f"gateway://{host}:{g.scheduler_port}",
                "DASK_GATEWAY__PUBLIC_ADDRESS": f"http://{host}:{g.port}",
                "DASK_GATEWAY__AUTH__TYPE": "casa.compute.gateway.FileTokenAuth",
                "DASK_LABEXTENSION__FACTORY__MODULE": "dask_gateway",
                "DASK_LABEXTENSION__FACTORY__CLASS": "GatewayCluster",
                "CASA_CATALOG": str(CatalogExports(ctx.paths).user_file(self.user.name)),
                # casa in the lab's terminal: this facility, and the kernels' environment.
                "CASA_HOME": str(ctx.paths.home),
                "CASA_LAB_ENV": str(python_env),
                "PATH": f"{python_env}/bin:{facility_bin}:/usr/local/bin:/usr/bin:/bin",
                # A user's environment has none of Jupyter's files: JupyterLab's server
                # extension, its assets and the Dask panel are found in the facility's.
                "JUPYTER_CONFIG_PATH": f"{lab_config_dir(ctx)}:{facility_bin.parent}/etc/jupyter",
                "JUPYTER_PATH": str(facility_bin.parent / "share" / "jupyter"),
            }
        )
        if ctx.config_file is not None:
            env["CASA_CONFIG"] = str(ctx.config_file)
        if gateway_backend(ctx) != "kubernetes":  # pods run an image: no python_env there
            # Clusters the lab makes (the Dask panel's NEW too) run the lab's environment.
            env["DASK_GATEWAY__CLUSTER__OPTIONS__PYTHON_ENV"] = str(python_env)
        if os.environ.get("X509_CERT_DIR"):  # the facility's CA, when casa is not root
            env["X509_CERT_DIR"] = os.environ["X509_CERT_DIR"]
        return env

    async def start(self):
        """Mint credentials, copy examples, start the server; record why if anything fails."""
        try:
            # Minting asks the issuer over its socket: off the hub's event loop.
            await asyncio.get_running_loop().run_in_executor(None, self._prepare)
            self.cmd = [str(self._env / "bin" / "jupyterhub-singleuser")]
            self._copy_examples()
            self._write_servicex_config()
            result = await super().start()
        except Exception as e:
            self._record_failure(str(e))
            raise
        self._clear_failure()
        self._renewal = asyncio.ensure_future(self._renew_tokens())
        return result

    async def stop(self, now=False):
        """Stop renewing, then stop the server."""
        renewal = getattr(self, "_renewal", None)
        if renewal is not None:
            renewal.cancel()
        return await super().stop(now=now)

    async def _renew_tokens(self) -> None:
        period = self.renew_every or max(30, self._ctx().config.issuer.token_lifetime // 2)
        while True:
            await asyncio.sleep(period)
            try:
                await asyncio.get_running_loop().run_in_executor(None, self._write_credentials)
                self.log.info("Renewed the tokens of %s", self.user.name)
            except Exception as e:  # keep the server; try again next period
                self.log.warning("Could not renew the tokens of %s: %s", self.user.name, e)
