"""Write the XRootD configuration casa generates, for the origin and cache pods of a Kustomization.

    python deploy/kubernetes/render_xrootd.py deploy/kubernetes/overlays/SITE [--check]

reads ``SITE/casa.toml`` and writes ``SITE/xrootd/``: ``origin.cfg``, ``cache.cfg``,
``scitokens.cfg`` and ``authdb``, the text casa's own ``OriginService`` and ``CacheService``
write at ``casa up`` (they are run here, on a scratch state directory), with three changes
for the pods:

- state paths are the containers' (``/var/lib/casa``);
- the token configuration and authdb are read from the ConfigMap (``/etc/casa-xrootd``);
- the cache reaches the origin through its Service (``casa-origin``), not ``facility.host``;
- the host certificate and its key are the Secret ``casa-xrootd-tls`` (``tls.crt``,
  ``tls.key``; its ``ca.crt`` is the CA the init containers put into the CA folder).

The daemons run as the unprivileged ``xrootd`` account of the image (never as root), so the
text is the one casa writes when it does not run as root. ``--check`` changes nothing and
exits 1 when the files differ from what casa would write now.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from casa.auth.tokens import ensure_signing_key
from casa.config import FacilityPaths, parse_config, tomllib
from casa.facility import Facility
from casa.services.xrootd.service import CacheService, OriginService

#: Where the pods keep casa's state, and where the ConfigMap is mounted.
STATE = "/var/lib/casa"
CONFIGMAP = "/etc/casa-xrootd"
#: Where the pods mount the Secret casa-xrootd-tls.
TLS_SECRET = "/etc/casa-xrootd-tls"
#: The origin's Service, as the cache pod reaches it.
ORIGIN_SERVICE = "casa-origin"
FILES = ("origin.cfg", "cache.cfg", "scitokens.cfg", "authdb")
HEADER = "# Rendered by deploy/kubernetes/render_xrootd.py from casa.toml.\n"


@dataclass(frozen=True)
class PodContext(Facility):
    """The facility as the XRootD pods see it: daemons that are not root."""

    @property
    def as_root(self) -> bool:
        """The pods' XRootD runs as its own account from the start."""
        return False

    def daemon_account(self) -> None:
        """No account to switch to."""
        return None


def render(casa_toml: str) -> dict[str, str]:
    """The XRootD files for the facility described by ``casa_toml``, by file name."""
    config = parse_config(tomllib.loads(casa_toml))
    with tempfile.TemporaryDirectory(prefix="casa-render-") as tmp:
        home = Path(tmp)
        ctx = PodContext(config, FacilityPaths(home))
        ensure_signing_key(ctx.paths.keys)  # a throwaway key: only its presence matters here
        out: dict[str, str] = {}
        tokens: set[str] = set()
        for service in (OriginService(), CacheService()):
            service.prepare(ctx)
            folder = ctx.service_dir(service.name)
            text = service.config_file(ctx).read_text()
            text = text.replace(f"{folder}/scitokens.cfg", f"{CONFIGMAP}/scitokens.cfg")
            text = text.replace(f"{folder}/authdb", f"{CONFIGMAP}/authdb")
            text = text.replace(f"{folder}/hostcert.pem", f"{TLS_SECRET}/tls.crt")
            text = text.replace(f"{folder}/hostkey.pem", f"{TLS_SECRET}/tls.key")
            text = text.replace(str(home), STATE)
            if service.name == "cache":
                here = f"pss.origin {config.facility.host}:{config.origin.port}\n"
                there = f"pss.origin {ORIGIN_SERVICE}:{config.origin.port}\n"
                if here not in text:
                    raise RuntimeError("casa's cache configuration no longer names its origin")
                text = text.replace(here, there)
            out[f"{service.name}.cfg"] = HEADER + text
            tokens.add((folder / "scitokens.cfg").read_text())
            out["authdb"] = (folder / "authdb").read_text()
        if len(tokens) != 1:
            raise RuntimeError("the origin and the cache no longer share one token configuration")
        out["scitokens.cfg"] = tokens.pop()
    return out


def main(argv: list[str] | None = None) -> int:
    """Render (or ``--check``) the ``xrootd/`` files of one Kustomization folder."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a folder holding casa.toml")
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if stale")
    args = parser.parse_args(argv)
    files = render((args.folder / "casa.toml").read_text())
    target = args.folder / "xrootd"
    stale = [n for n in FILES if not (target / n).exists() or (target / n).read_text() != files[n]]
    if args.check:
        for name in stale:
            print(f"{target / name} differs from what casa renders from casa.toml")
        return 1 if stale else 0
    target.mkdir(exist_ok=True)
    for name in FILES:
        (target / name).write_text(files[name])
    print(f"wrote {', '.join(str(target / n) for n in FILES)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
