"""WLCG bearer tokens: minting (ES256), discovery, and explaining why a read was refused."""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from casa.errors import ConfigError, DataError, UsageError
from casa.filesystem import create_once, write_file

KEY_ID = "casa-1"
WLCG_VERSION = "1.0"


#: The WLCG compute scopes of a gateway token: manage one's own Dask clusters.
GATEWAY_SCOPES = ["compute.create", "compute.read", "compute.modify", "compute.cancel"]


def default_scopes(user: str) -> list[str]:
    """What a facility user may read: public data and their own area (as storage spells it)."""
    from casa.names import close_scope

    return [
        close_scope("storage.read:/store/data"),
        close_scope(f"storage.read:/store/user/{user}"),
    ]


def gateway_audience(facility_name: str) -> str:
    """The audience of gateway tokens, so that a data token cannot drive clusters."""
    return f"{facility_name}-gateway"


# -- keys -----------------------------------------------------------------------------


def ensure_signing_key(keys_dir: Path) -> Path:
    """Create the facility's ES256 key pair once (private key mode 0600); return its path."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from casa.auth.certificates import private_key_pem

    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(keys_dir, 0o700)
    private = keys_dir / "issuer.pem"
    public = keys_dir / "issuer.pub.pem"
    if not private.exists():
        # Two processes starting at once agree on one key.
        create_once(private, private_key_pem(ec.generate_private_key(ec.SECP256R1())))
    if not public.exists():
        write_file(public, public_key_pem(private), 0o644)
    return private


def public_key_pem(private_key_file: Path) -> bytes:
    """The public half of a private key file, as PEM."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(private_key_file.read_bytes(), password=None)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def jwks_from_public_pem(pem: bytes) -> dict:
    """A JSON Web Key Set holding one P-256 public key."""
    from cryptography.hazmat.primitives import serialization

    numbers = serialization.load_pem_public_key(pem).public_numbers()

    def b64(n: int) -> str:
        return base64.urlsafe_b64encode(n.to_bytes(32, "big")).rstrip(b"=").decode()

    return {
        "keys": [
            {
                "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": KEY_ID,
                "x": b64(numbers.x), "y": b64(numbers.y),
            }
        ]
    }  # fmt: skip


class TokenIssuer:
    """Mints WLCG-profile JWTs signed with the facility's private key."""

    def __init__(self, private_key_file: Path, issuer: str, audience: str):
        from cryptography.hazmat.primitives import serialization

        self.issuer = issuer
        self.audience = audience
        try:
            data = private_key_file.read_bytes()
        except PermissionError:
            raise ConfigError(
                f"cannot read the issuer's key {private_key_file}: only the facility's own "
                "account may mint tokens"
            ) from None
        self._key = serialization.load_pem_private_key(data, password=None)

    def mint(self, user: str, scopes: list[str], lifetime: int, audience: str | None = None) -> str:
        """A token for ``user`` with ``scopes``, valid for ``lifetime`` seconds from now."""
        import jwt

        now = int(time.time())
        claims = {
            "wlcg.ver": WLCG_VERSION,
            "iss": self.issuer,
            "sub": user,
            "aud": audience or self.audience,
            "iat": now,
            "nbf": now,
            "exp": now + int(lifetime),
            "jti": str(uuid.uuid4()),
            "scope": " ".join(scopes),
        }
        return jwt.encode(
            claims, self._key, algorithm="ES256", headers={"kid": KEY_ID, "typ": "JWT"}
        )


def verify_token(token: str, public_key_pem: bytes, issuer: str | None = None,
                 audience: str | None = None) -> dict:  # fmt: skip
    """The claims of ``token`` if the facility's issuer signed it (ES256) and it is valid
    now, with ``exp``, ``sub`` and ``iss``; also from ``issuer`` and for ``audience`` when
    given. ``jwt.PyJWTError`` (saying why) otherwise. What every service that takes the
    facility's tokens checks."""
    import jwt

    return jwt.decode(
        token.strip(), public_key_pem, algorithms=["ES256"], audience=audience, issuer=issuer,
        options={"require": ["exp", "sub", "iss"] + (["aud"] if audience else []),
                 "verify_aud": audience is not None},
    )  # fmt: skip


# -- discovery (WLCG Bearer Token Discovery) ------------------------------------------


@dataclass(frozen=True)
class DiscoveredToken:
    """A token and where it was found."""

    token: str
    source: str


class DiscoveryPlace(NamedTuple):
    """One place WLCG Bearer Token Discovery looks for the caller's token."""

    #: How messages name it: ``$BEARER_TOKEN``, ``$BEARER_TOKEN_FILE`` or the file's path.
    label: str
    #: The environment variable this place is (None for the two files named by the UID).
    variable: str | None
    #: The file to read (None for ``$BEARER_TOKEN``, and for ``$BEARER_TOKEN_FILE`` unset).
    path: Path | None


def token_file_name(uid: int | None = None) -> str:
    """The name WLCG discovery gives a user's token file: ``bt_u<UID>`` (the caller's UID)."""
    return f"bt_u{os.getuid() if uid is None else uid}"


def discovery_places(env: dict | None = None) -> list[DiscoveryPlace]:
    """Where WLCG Bearer Token Discovery looks, in its order: the one source of that order.

    ``$BEARER_TOKEN``, the file ``$BEARER_TOKEN_FILE`` names, ``$XDG_RUNTIME_DIR/bt_u<UID>``
    (when that variable is set) and ``/tmp/bt_u<UID>``.
    """
    env = os.environ if env is None else env
    named = Path(env["BEARER_TOKEN_FILE"]) if env.get("BEARER_TOKEN_FILE") else None
    places = [
        DiscoveryPlace("$BEARER_TOKEN", "BEARER_TOKEN", None),
        DiscoveryPlace("$BEARER_TOKEN_FILE", "BEARER_TOKEN_FILE", named),
    ]
    folders = [Path(env["XDG_RUNTIME_DIR"])] if env.get("XDG_RUNTIME_DIR") else []
    for folder in [*folders, Path("/tmp")]:
        path = folder / token_file_name()
        places.append(DiscoveryPlace(str(path), None, path))
    return places


def discovery_locations(env: dict | None = None) -> list[str]:
    """Where WLCG discovery looks, in order, as words for error messages."""
    return [place.label for place in discovery_places(env)]


def discover_token(env: dict | None = None) -> DiscoveredToken | None:
    """The caller's token by WLCG discovery: the first place of :func:`discovery_places`
    holding one; a set ``$BEARER_TOKEN_FILE`` ends the search, found or not."""
    env = os.environ if env is None else env
    for place in discovery_places(env):
        if place.path is None:  # $BEARER_TOKEN (an unset $BEARER_TOKEN_FILE holds nothing)
            token = env.get(place.variable, "").strip()
            if token:
                return DiscoveredToken(token, place.label)
            continue
        text = _read_token_file(place.path)
        if text:
            return DiscoveredToken(text, str(place.path))
        if place.variable is not None:
            return None
    return None


def token_store_path(env: dict | None = None) -> Path:
    """Where ``casa token issue`` stores a token so that discovery finds it: the first file
    discovery reads whose folder exists (``$BEARER_TOKEN_FILE`` when set, whatever it is)."""
    files = [place for place in discovery_places(env) if place.path is not None]
    for place in files:
        if place.variable is not None or place.path.parent.is_dir():
            return place.path
    return files[-1].path


def store_token(token: str, path: Path) -> Path:
    """Write ``token`` to ``path`` readable by its owner only (mode 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_file(path, token + "\n", 0o600)  # never through a link planted in /tmp


def _read_token_file(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except (FileNotFoundError, NotADirectoryError):
        return None
    except PermissionError:
        raise DataError(f"token file {path} exists but cannot be read by you") from None


# -- reading claims and explaining refusals ------------------------------------------------


def unverified_claims(token: str, source: str | None = None) -> dict:
    """The claims of a token, without checking its signature (for display and diagnosis)."""
    try:
        payload = token.split(".")[1]
        payload += "=" * (-len(payload) % 4)
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (IndexError, ValueError):
        claims = None
    if not isinstance(claims, dict):
        where = f"the bearer token from {source}" if source else "the bearer token found"
        raise DataError(
            f"{where} is not a JWT (three base64 parts, the middle one a JSON object): "
            "get a new one with 'casa token issue'"
        ) from None
    return claims


def scope_covers(scope: str, path: str, action: str = "storage.read") -> bool:
    """Whether a WLCG ``scope`` string grants ``action`` on ``path``, decided as the installed
    XRootD decides: the canonical path starts with the scope's canonical path. Storage spells
    every user's and dataset's folder with a terminator (:func:`casa.names.storage_path`),
    so for the scopes casa mints this is also a match at path-component boundaries."""
    from casa.names import storage_path

    try:
        target = storage_path(path)
    except UsageError:
        return False
    for item in scope.split():
        name, _, prefix = item.partition(":")
        if name != action:
            continue
        rule = "/" + "/".join(p for p in prefix.split("/") if p not in ("", "."))
        if rule == "/" or target.startswith(rule):
            return True
    return False


def explain_refusal(
    found: DiscoveredToken | None,
    path: str,
    *,
    issuer: str | None,
    public_key_pem: bytes | None,
    audience: str | None = None,
    env: dict | None = None,
) -> str:
    """Why a read of ``path`` with this token is refused, in words: the first real reason."""
    if found is None:
        return (
            f"no bearer token found (looked in {', '.join(discovery_locations(env))}); "
            "get one with 'casa token issue'"
        )
    try:
        claims = unverified_claims(found.token, found.source)
    except DataError as e:
        return str(e)
    for check in (_signature_reason, _issuer_reason, _time_reason, _audience_reason,
                  _claims_reason):  # fmt: skip
        reason = check(found, claims, issuer=issuer, key=public_key_pem, audience=audience)
        if reason:
            return reason
    if not scope_covers(str(claims.get("scope", "")), path):
        return (
            f"the token from {found.source} (for {claims.get('sub')!r}) has no scope to read {path}"
            f" (its scopes: {claims.get('scope') or 'none'})"
        )
    return f"the storage refused {path} although the token from {found.source} looks valid"


_RENEW = "get a new one with 'casa token issue'"


def _signature_reason(found: DiscoveredToken, claims: dict, *, key: bytes | None, **_) -> str:
    import jwt

    if key is None:
        return ""
    try:
        jwt.decode(
            found.token, key, algorithms=["ES256"],
            options={"verify_aud": False, "verify_exp": False, "verify_nbf": False,
                     "verify_iat": False},
        )  # fmt: skip
    except jwt.InvalidSignatureError:
        return f"the token from {found.source} is not signed by this facility's issuer"
    except jwt.PyJWTError as e:
        return f"the token from {found.source} is not valid ({e}): {_RENEW}"
    return ""


def _issuer_reason(found: DiscoveredToken, claims: dict, *, issuer: str | None, **_) -> str:
    if issuer and claims.get("iss") != issuer:
        return f"the token from {found.source} was issued by {claims.get('iss')!r}, not {issuer!r}"
    return ""


def _time_reason(found: DiscoveredToken, claims: dict, **_) -> str:
    exp, nbf, now = claims.get("exp"), claims.get("nbf"), time.time()
    if not isinstance(exp, (int, float)) or isinstance(exp, bool):
        return (
            f"the token from {found.source} has no expiry ('exp' claim), and the storage "
            f"refuses tokens without one: {_RENEW}"
        )
    if exp < now:
        return f"the token from {found.source} expired at {_utc(exp)}; {_RENEW}"
    if isinstance(nbf, (int, float)) and nbf > now + 60:
        return f"the token from {found.source} is not valid before {_utc(nbf)}; {_RENEW}"
    return ""


def _audience_reason(found: DiscoveredToken, claims: dict, *, audience: str | None, **_) -> str:
    if audience is None:
        return ""
    aud = claims.get("aud")
    audiences = aud if isinstance(aud, list) else [aud]
    if audience in audiences:
        return ""
    if gateway_audience(audience) in audiences:
        return (
            f"the token from {found.source} is a gateway token (audience "
            f"{gateway_audience(audience)!r}), not a data token: get a data token with "
            "'casa token issue'"
        )
    return (
        f"the token from {found.source} is for the audience {aud!r}, not this facility's "
        f"storage ({audience!r}): {_RENEW}"
    )


def _claims_reason(found: DiscoveredToken, claims: dict, **_) -> str:
    missing = [c for c in ("sub", "scope") if not claims.get(c)]
    if missing:
        names = " and ".join(repr(c) for c in missing)
        return f"the token from {found.source} has no {names} claim: {_RENEW}"
    return ""


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))
