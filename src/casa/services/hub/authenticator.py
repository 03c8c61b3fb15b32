"""Login with a facility account (``casa user add``), checked against casa's database."""

from __future__ import annotations

import os
from pathlib import Path

from jupyterhub.auth import Authenticator
from traitlets import Unicode

from casa.auth.accounts import AccountStore, current_account


class CasaAuthenticator(Authenticator):
    """Facility accounts with scrypt-hashed passwords; admins as marked by ``--admin``."""

    database = Unicode(help="casa's SQLite database holding the accounts.", config=True)

    def _store(self) -> AccountStore:
        return AccountStore(Path(self.database))

    async def authenticate(self, handler, data):
        """The account if the password is right, else None (JupyterHub shows 'Invalid')."""
        name = (data.get("username") or "").strip()
        account = self._store().verify(name, data.get("password") or "")
        if account is None:
            self.log.warning("Failed login for %r", name)
            return None
        return {"name": account.name, "admin": account.admin}

    def check_allowed(self, username, authentication=None):
        """Every facility account may log in; without root, only the account running casa."""
        if os.geteuid() != 0 and username != current_account():
            return False
        return self._store().get(username) is not None
