"""JupyterHub's configuration, derived from casa.toml.

The generated ``services/hub/jupyterhub_config.py`` only calls :func:`configure`, so the
whole hub setup lives here, in code, next to the authenticator and the spawner.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from pathlib import Path

from casa.data.catalog import DatasetCatalog
from casa.data.exports import CatalogExports
from casa.facility import Facility
from casa.filesystem import PASSABLE_FOLDER, create_once, write_file
from casa.lab.dashboards import EXTENSION as LAB_DASHBOARDS

HUB_API_TOKEN_FILE = "hub-api-token"
#: The lab's terminal: a login shell's set-up, then the lab's environment first on PATH
#: (Debian's /etc/profile sets PATH anew, which would put Debian's python3 and pip first).
TERMINAL_RC = """\
# casa's lab terminal (written by the hub): a login shell's set-up, then the Python
# environment of the lab's kernels first on PATH, so that casa, python3 and pip are theirs.
if [ -r /etc/profile ]; then . /etc/profile; fi
for rc in ~/.bash_profile ~/.bash_login ~/.profile; do
  if [ -r "$rc" ]; then . "$rc"; break; fi
done
if [ -n "$CASA_LAB_ENV" ]; then export PATH="$CASA_LAB_ENV/bin:$PATH"; fi
"""
#: The JupyterHub service casa itself uses (status, tests, admin tasks).
CASA_SERVICE = "casa"


def user_env_prefix(ctx: Facility) -> Path:
    """The Python environment users' notebook servers run from."""
    if ctx.config.hub.user_env:
        return Path(ctx.config.hub.user_env)
    if os.geteuid() == 0:
        return Path("/opt/casa-user-env")
    return Path(sys.prefix)


def proxy_command() -> str:
    """configurable-http-proxy, as installed by the Makefile next to casa's environment."""
    local = Path(sys.prefix) / "node" / "node_modules" / ".bin" / "configurable-http-proxy"
    return str(local) if local.exists() else "configurable-http-proxy"


def secret_file(ctx: Facility, name: str, nbytes: int = 32) -> Path:
    """A random secret under ``keys/`` (mode 0600), created once."""
    path = ctx.paths.keys / name
    ctx.paths.keys.mkdir(parents=True, exist_ok=True, mode=0o700)
    create_once(path, secrets.token_hex(nbytes))
    return path


def hub_api_token(ctx: Facility) -> str:
    """The token of casa's own JupyterHub service (admin over users and servers)."""
    return secret_file(ctx, HUB_API_TOKEN_FILE).read_text().strip()


#: JupyterLab's settings for every user (their own settings still win): no "official
#: Jupyter news?" pop-up at their first login.
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False}
}


def lab_config_dir(ctx: Facility) -> Path:
    """A Jupyter configuration folder of the facility's, first on users' servers'
    ``$JUPYTER_CONFIG_PATH`` (it holds :data:`LAB_SETTINGS`)."""
    return ctx.service_dir("hub") / "jupyter-config"


def login_announcement(ctx: Facility) -> str:
    """What the login page says above the form."""
    return (
        f"{ctx.config.facility.name}: an analysis facility. Log in with your facility account; "
        "your JupyterLab, your Dask clusters and your data token are ready when it opens."
    )


def configure(c, home: str, config_file: str | None = None) -> None:
    """Fill JupyterHub's config object ``c`` for the facility in ``home``."""
    from casa.facility import facility_context

    ctx = facility_context(home, config_file)
    hub = ctx.config.hub
    host = ctx.config.host_of("hub")
    state = ctx.service_dir("hub")
    state.mkdir(parents=True, exist_ok=True)
    os.chmod(state, PASSABLE_FOLDER)  # users' servers open catalog.json here by its name
    database = state / "jupyterhub.sqlite"  # users, server ports, token hashes, OAuth secrets
    if database.exists():
        os.chmod(database, 0o600)  # also one an older casa left world-readable

    c.JupyterHub.bind_url = f"http://{host}:{hub.port}"
    c.JupyterHub.hub_bind_url = f"http://127.0.0.1:{hub.api_port}"
    c.JupyterHub.db_url = f"sqlite:///{state / 'jupyterhub.sqlite'}"
    c.JupyterHub.cookie_secret_file = str(secret_file(ctx, "hub-cookie-secret"))
    c.JupyterHub.pid_file = str(state / "jupyterhub.pid")
    c.JupyterHub.cleanup_servers = True
    c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{hub.proxy_api_port}"
    c.ConfigurableHTTPProxy.command = [proxy_command()]
    c.ConfigurableHTTPProxy.auth_token = secret_file(ctx, "hub-proxy-token").read_text().strip()
    c.ConfigurableHTTPProxy.pid_file = str(state / "proxy.pid")

    # The facility's name on the login page (JupyterHub's own pages say only "JupyterHub").
    c.JupyterHub.template_vars = {"announcement_login": login_announcement(ctx)}
    c.JupyterHub.services = [{"name": CASA_SERVICE, "api_token": hub_api_token(ctx)}]
    c.JupyterHub.load_roles = [
        {
            "name": "casa-admin",
            "scopes": ["admin:users", "admin:servers", "tokens", "read:hub", "access:servers"],
            "services": [CASA_SERVICE],
        }
    ]

    if hub.auth == "oidc":
        c.JupyterHub.authenticator_class = "generic-oauth"
        c.GenericOAuthenticator.authorize_url = hub.oidc_authorize_url
        c.GenericOAuthenticator.token_url = hub.oidc_token_url
        c.GenericOAuthenticator.userdata_url = hub.oidc_userdata_url
        c.GenericOAuthenticator.client_id = hub.oidc_client_id
        c.GenericOAuthenticator.client_secret = (
            Path(hub.oidc_client_secret_file).read_text().strip()
        )
        c.GenericOAuthenticator.oauth_callback_url = f"http://{host}:{hub.port}/hub/oauth_callback"
        c.GenericOAuthenticator.scope = list(hub.oidc_scope)
        c.GenericOAuthenticator.username_claim = hub.oidc_username_claim
        c.GenericOAuthenticator.manage_groups = True
        c.GenericOAuthenticator.auth_state_groups_key = f"oauth_user.{hub.oidc_groups_claim}"
        c.GenericOAuthenticator.allowed_groups = set(hub.oidc_allowed_groups)
        c.GenericOAuthenticator.admin_groups = set(hub.oidc_admin_groups)
        c.GenericOAuthenticator.allow_all = not hub.oidc_allowed_groups
    else:
        c.JupyterHub.authenticator_class = "casa.services.hub.authenticator.CasaAuthenticator"
        c.CasaAuthenticator.database = str(ctx.paths.database)

    c.JupyterHub.spawner_class = "casa.services.hub.spawner.CasaSpawner"
    c.CasaSpawner.casa_home = str(ctx.paths.home)
    c.CasaSpawner.casa_config_file = str(ctx.config_file or "")
    c.CasaSpawner.failures_file = str(state / "spawn-failures.json")
    c.CasaSpawner.renew_every = hub.token_renewal
    prefix = user_env_prefix(ctx)
    c.Spawner.cmd = [str(prefix / "bin" / "jupyterhub-singleuser")]
    c.Spawner.default_url = "/lab"
    terminal_rc = state / "terminal.bashrc"
    write_file(terminal_rc, TERMINAL_RC, 0o644)
    labconfig = lab_config_dir(ctx) / "labconfig"
    labconfig.mkdir(parents=True, exist_ok=True)
    for folder in (labconfig.parent, labconfig):
        os.chmod(folder, 0o755)
    write_file(labconfig / "default_setting_overrides.json", json.dumps(LAB_SETTINGS), 0o644)
    # The facility's name in the lab's window title ("dimuon.ipynb - casa JupyterLab"):
    # JupyterLab's page config, read from every Jupyter config folder.
    page_config = {"appName": f"{ctx.config.facility.name} JupyterLab"}
    write_file(labconfig / "page_config.json", json.dumps(page_config), 0o644)
    c.Spawner.args = [
        f"--ServerApp.jpserver_extensions={LAB_DASHBOARDS}=True",
        # No update checks (and no news fetched: LAB_SETTINGS turns the question off).
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        f"--ServerApp.terminado_settings=shell_command={['/bin/bash', '--rcfile', str(terminal_rc), '-i']!r}",
    ]
    c.Spawner.notebook_dir = "~"
    c.Spawner.start_timeout = 120
    c.Spawner.http_timeout = 90
    c.Spawner.ip = "127.0.0.1"
    c.Spawner.environment = {"PATH": f"{prefix / 'bin'}:/usr/local/bin:/usr/bin:/bin"}
    # Every change rewrites the exports; this catches up with a catalog an older casa changed.
    catalog = DatasetCatalog(ctx.paths.database)
    try:
        for problem in CatalogExports(ctx.paths).refresh(catalog):
            print(f"casa: {problem}", file=sys.stderr)
    finally:
        catalog.close()
