"""JupyterHub login through OpenID Connect (GenericOAuthenticator) against a real provider."""

from __future__ import annotations

import os
import shutil

import pytest
import requests

from casa.services.hub.config import hub_api_token
from oidc_provider import OIDCProvider, browserless_login

pytestmark = pytest.mark.skipif(
    (shutil.which("xrootd") is None or shutil.which("node") is None) and not os.environ.get("CI"),
    reason="needs xrootd and node (make install puts them in place)",
)

USERS = {
    "oalice": {"password": "alice-secret", "groups": ["physicists"], "email": "a@example.org"},
    "obob": {
        "password": "bob-secret",
        "groups": ["physicists", "admins"],
        "email": "b@example.org",
    },
    "omallory": {"password": "mallory-secret", "groups": ["guests"], "email": "m@example.org"},
}


@pytest.fixture(scope="module")
def oidc_hub(tmp_path_factory):
    from conftest import new_facility_home, stop_everything

    f = new_facility_home()
    hub = f"http://127.0.0.1:{f.ports['hub']}"
    secret = f.home / "oidc-client-secret"
    secret.write_text("s3cret-for-the-hub\n")
    with OIDCProvider(USERS, "casa-hub", "s3cret-for-the-hub", f"{hub}/hub/oauth_callback") as op:
        text = (
            (f.home / "casa.toml")
            .read_text()
            .replace(
                "[hub]\n",
                "[hub]\n"
                'auth = "oidc"\n'
                f'oidc_authorize_url = "{op.authorize_url}"\n'
                f'oidc_token_url = "{op.token_url}"\n'
                f'oidc_userdata_url = "{op.userinfo_url}"\n'
                'oidc_client_id = "casa-hub"\n'
                f'oidc_client_secret_file = "{secret}"\n'
                'oidc_scope = ["openid", "profile", "email", "groups"]\n'
                'oidc_allowed_groups = ["physicists"]\n'
                'oidc_admin_groups = ["admins"]\n',
            )
        )
        (f.home / "casa.toml").write_text(text)
        up = f.casa("up")
        assert up.returncode == 0, up.stdout + up.stderr
        f.base = hub
        yield f
        f.casa("down")
        stop_everything(f.home)


def _login(f, user: str, password: str) -> requests.Response:
    session = requests.Session()
    return browserless_login(f"{f.base}/hub/oauth_login?next=/hub/home", user, password, session)


def _hub_user(f, name: str) -> dict | None:
    r = requests.get(f"{f.base}/hub/api/users/{name}",
                     headers={"Authorization": f"token {hub_api_token(f.ctx())}"})  # fmt: skip
    return r.json() if r.status_code == 200 else None


def test_allowed_group_logs_in(oidc_hub):
    r = _login(oidc_hub, "oalice", "alice-secret")
    assert r.status_code == 200 and r.url.endswith("/hub/home"), (r.status_code, r.url)
    user = _hub_user(oidc_hub, "oalice")
    assert user is not None and user["admin"] is False
    assert "physicists" in user["groups"]


def test_admin_group_makes_an_admin(oidc_hub):
    r = _login(oidc_hub, "obob", "bob-secret")
    assert r.status_code == 200 and r.url.endswith("/hub/home")
    assert _hub_user(oidc_hub, "obob")["admin"] is True


def test_other_groups_and_bad_passwords_are_refused(oidc_hub):
    r = _login(oidc_hub, "omallory", "mallory-secret")
    assert r.status_code == 403
    assert _hub_user(oidc_hub, "omallory") is None
    r = _login(oidc_hub, "oalice", "wrong")
    assert "/hub/home" not in r.url and r.status_code in (200, 401)
