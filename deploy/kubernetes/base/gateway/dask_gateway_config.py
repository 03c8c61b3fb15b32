# casa's Dask Gateway on Kubernetes (mounted from the ConfigMap casa-gateway).
#
# Users authenticate with facility gateway tokens (casa's CasaAuthenticator, as on one
# machine). Clusters are DaskCluster objects that dask-gateway's Kubernetes backend writes
# and its controller (the casa-gateway-controller Deployment) turns into scheduler and
# worker pods, routed by Traefik (the casa-gateway Service). Each cluster receives the data
# token of the user who owns it, minted by the issuer container beside the gateway (casa's
# CasaKubeBackend asks for it in a thread, off the gateway's event loop).
#
# ruff: noqa: F821 - dask-gateway runs this file with its configuration object as c.
import os

from casa.auth.tokens import gateway_audience
from casa.config import facility_paths, load_config, parse_size
from casa.facility import Facility
from casa.services.gateway.server import cluster_options

HOME = os.environ.get("CASA_HOME", "/var/lib/casa")
CONFIG = os.environ.get("CASA_CONFIG", "/etc/casa/casa.toml")
NAMESPACE = os.environ["POD_NAMESPACE"]
#: Must match the controller's, and the label Traefik selects routes by.
INSTANCE = "casa"
CLUSTER_UID = 1000

ctx = Facility(load_config(facility_paths(HOME), CONFIG), facility_paths(HOME))
g = ctx.config.gateway

c.DaskGateway.address = f":{g.api_port}"
c.DaskGateway.log_level = "INFO"

c.DaskGateway.authenticator_class = "casa.services.gateway.server.CasaAuthenticator"
c.CasaAuthenticator.issuer = ctx.config.issuer_url
c.CasaAuthenticator.audience = gateway_audience(ctx.config.facility.name)
c.CasaAuthenticator.public_key_file = "/etc/casa-issuer/public/issuer.pub.pem"

c.DaskGateway.backend_class = "casa.services.gateway.kubernetes.CasaKubeBackend"
c.KubeBackend.gateway_instance = INSTANCE
c.KubeBackend.api_url = f"http://casa-gateway-api.{NAMESPACE}:{g.api_port}/api"
c.KubeClusterConfig.namespace = NAMESPACE
c.KubeClusterConfig.image = os.environ["CASA_IMAGE"]
c.KubeClusterConfig.idle_timeout = float(g.idle_timeout)
if g.max_cores_per_user:
    c.KubeClusterConfig.cluster_max_cores = float(g.max_cores_per_user)
if parse_size(g.max_memory_per_user):
    c.KubeClusterConfig.cluster_max_memory = parse_size(g.max_memory_per_user)
_pod = {
    "securityContext": {
        "runAsNonRoot": True,
        "runAsUser": CLUSTER_UID,
        "runAsGroup": CLUSTER_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
}
_container = {
    "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
}
c.KubeClusterConfig.scheduler_extra_pod_config = _pod
c.KubeClusterConfig.worker_extra_pod_config = _pod
c.KubeClusterConfig.scheduler_extra_container_config = _container
c.KubeClusterConfig.worker_extra_container_config = _container


def user_token(username):
    """The data token of the user who owns the cluster, minted for that user only."""
    return ctx.request_token(user=username)


c.Backend.cluster_options = cluster_options(g.max_worker_cores, parse_size(g.max_worker_memory))
c.OwnerDataToken.data_token = user_token
