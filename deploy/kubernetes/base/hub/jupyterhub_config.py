# casa's JupyterHub on Kubernetes (mounted from the ConfigMap casa-hub).
#
# casa.services.hub.config.configure sets the hub up as on one machine (facility accounts or OpenID
# Connect from casa.toml, the database and secrets under /var/lib/casa, the proxy); this
# file changes what differs here: the hub listens on every interface of its pod, users'
# servers are pods (KubeSpawner), and each server receives its user's data and gateway
# tokens, minted at spawn by the issuer container beside the hub (over the Unix socket in
# /var/lib/casa/services/issuer, which the two containers share).
#
# ruff: noqa: F821 - JupyterHub runs this file with its configuration object as c.
import asyncio
import os

from casa.facility import facility_context
from casa.services.hub.authenticator import CasaAuthenticator
from casa.services.hub.config import configure

HOME = os.environ.get("CASA_HOME", "/var/lib/casa")
CONFIG = os.environ.get("CASA_CONFIG", "/etc/casa/casa.toml")
NAMESPACE = os.environ["POD_NAMESPACE"]
PUBLIC_URL = os.environ["CASA_PUBLIC_URL"].rstrip("/")
USER_UID = 1000

configure(c, HOME, CONFIG)
ctx = facility_context(HOME, CONFIG)
hub = ctx.config.hub
gateway = ctx.config.gateway

# The hub's pod: the proxy answers the Service (and the Ingress); users' pods reach the API.
c.JupyterHub.bind_url = f"http://0.0.0.0:{hub.port}"
c.JupyterHub.hub_bind_url = f"http://0.0.0.0:{hub.api_port}"
c.JupyterHub.hub_connect_url = f"http://casa-hub.{NAMESPACE}:{hub.api_port}"
c.JupyterHub.cleanup_servers = False  # users' pods outlive a restart of the hub
if hub.auth == "oidc":
    c.GenericOAuthenticator.oauth_callback_url = f"{PUBLIC_URL}/hub/oauth_callback"


class PodAccountsAuthenticator(CasaAuthenticator):
    """Facility accounts, each with its own server pod: no Unix account, no single-user limit."""

    def check_allowed(self, username, authentication=None):
        """Every facility account may log in (on one machine without root, only casa's own)."""
        return self._store().get(username) is not None


if hub.auth == "casa":
    c.JupyterHub.authenticator_class = PodAccountsAuthenticator

# Users' servers: one pod each, from casa's image, with a persistent home.
c.JupyterHub.spawner_class = "kubespawner.KubeSpawner"
c.KubeSpawner.namespace = NAMESPACE
c.KubeSpawner.image = os.environ["CASA_IMAGE"]
c.KubeSpawner.cmd = ["jupyterhub-singleuser"]
c.KubeSpawner.ip = "0.0.0.0"
c.KubeSpawner.port = 8888
c.KubeSpawner.uid = USER_UID
c.KubeSpawner.gid = USER_UID
c.KubeSpawner.fs_gid = USER_UID
c.KubeSpawner.working_dir = "/home/user"
c.KubeSpawner.automount_service_account_token = False
c.KubeSpawner.storage_pvc_ensure = True
c.KubeSpawner.pvc_name_template = "casa-home-{user_server}"
c.KubeSpawner.storage_capacity = os.environ.get("CASA_USER_STORAGE", "10Gi")
c.KubeSpawner.storage_class = os.environ.get("CASA_USER_STORAGE_CLASS") or None
c.KubeSpawner.volumes = [{"name": "home", "persistentVolumeClaim": {"claimName": "{pvc_name}"}}]
c.KubeSpawner.volume_mounts = [{"name": "home", "mountPath": "/home/user"}]
c.KubeSpawner.pod_security_context = {
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}
c.KubeSpawner.container_security_context = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
}


async def give_credentials(spawner):
    """Mint the user's data and gateway tokens and hand them to the server's environment."""
    user = spawner.user.name
    loop = asyncio.get_running_loop()
    data = await loop.run_in_executor(None, lambda: ctx.request_token(user=user))
    token = await loop.run_in_executor(None, lambda: ctx.request_token(user=user, kind="gateway"))
    # gateway.address, as for casa's own clients (the gateway's Service), else that Service.
    address = gateway.address or f"casa-gateway.{NAMESPACE}"
    spawner.environment = {
        **spawner.environment,
        "HOME": "/home/user",
        # WLCG discovery: root:// reads through the cache.
        "BEARER_TOKEN": data,
        # Plain dask_gateway.Gateway(), casa.connect() and the Dask panel.
        "DASK_GATEWAY__ADDRESS": f"http://{address}:{gateway.port}",
        "DASK_GATEWAY__PROXY_ADDRESS": f"gateway://{address}:{gateway.scheduler_port}",
        "DASK_GATEWAY__PUBLIC_ADDRESS": f"http://{address}:{gateway.port}",
        "DASK_GATEWAY__AUTH__TYPE": "casa.compute.gateway.CasaGatewayAuth",
        "DASK_GATEWAY__AUTH__KWARGS__TOKEN": token,
        "DASK_LABEXTENSION__FACTORY__MODULE": "dask_gateway",
        "DASK_LABEXTENSION__FACTORY__CLASS": "GatewayCluster",
    }


c.KubeSpawner.pre_spawn_hook = give_credentials
