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
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import kubernetes_validate
import pytest
import yaml

from casa.config import parse_config, parse_size, tomllib
from casa.facility import Facility
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
    assert holders == 2  # the hub's pod and the gateway's pod


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
    assert env["DASK_GATEWAY__ADDRESS"] == f"http://casa-gateway.casa:{config.gateway.port}"
    gateway_service = find(objects, "Service", "casa-gateway")
    assert {p["port"] for p in gateway_service["spec"]["ports"]} == {
        config.gateway.port,
        config.gateway.scheduler_port,
    }
    assert Spawner.environment == {"PATH": "/opt/casa/bin"}  # the class default is untouched


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
