# The controller of casa's Dask Gateway on Kubernetes (mounted from the ConfigMap
# casa-gateway-controller): it turns DaskCluster objects into scheduler and worker pods,
# their Services and credentials, and the Traefik routes that reach them.
#
# ruff: noqa: F821 - dask-gateway runs this file with its configuration object as c.
import os

from casa.config import facility_paths, load_config

NAMESPACE = os.environ["POD_NAMESPACE"]
g = load_config(facility_paths("/var/lib/casa"), "/etc/casa/casa.toml").gateway

c.KubeController.address = ":8000"
c.KubeController.api_url = f"http://casa-gateway-api.{NAMESPACE}:{g.api_port}/api"
c.KubeController.gateway_instance = "casa"
c.KubeController.proxy_prefix = ""
c.KubeController.proxy_web_entrypoint = "web"
c.KubeController.proxy_tcp_entrypoint = "tcp"
c.KubeController.proxy_web_middlewares = [{"name": "casa-clusters-prefix", "namespace": NAMESPACE}]
c.KubeController.log_level = "INFO"
