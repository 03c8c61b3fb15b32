"""Driving a user's JupyterLab over HTTP: log in, spawn, run code in a kernel, type in a
terminal (no browser)."""

from __future__ import annotations

import json
import re
import time
import uuid

import requests
import websocket


class HubClient:
    """A hub at ``base`` (``http://127.0.0.1:PORT``), as one logged-in browser session."""

    def __init__(self, base: str):
        self.base = base.rstrip("/")
        self.session = requests.Session()

    def login(self, username: str, password: str) -> requests.Response:
        """POST the login form; the response says where the hub sent us."""
        self.session.get(f"{self.base}/hub/login")
        return self.session.post(
            f"{self.base}/hub/login",
            data={"username": username, "password": password,
                  "_xsrf": self.session.cookies.get("_xsrf", "")},
            allow_redirects=True,
        )  # fmt: skip


class HubAdmin:
    """The hub's REST API with casa's service token."""

    def __init__(self, base: str, token: str):
        self.base = base.rstrip("/")
        self.headers = {"Authorization": f"token {token}"}

    def api(self, method: str, path: str, **kw) -> requests.Response:
        """One hub API call."""
        return requests.request(method, f"{self.base}/hub/api{path}", headers=self.headers, **kw)

    def spawn(self, user: str, timeout: float = 120, options: dict | None = None) -> dict:
        """Start ``user``'s server (with the spawn page's ``options``) and wait until it is
        ready (or its spawn failed)."""
        if self.api("GET", f"/users/{user}").status_code == 404:
            self.api("POST", f"/users/{user}")  # the hub knows users once they logged in
        r = self.api("POST", f"/users/{user}/server", json=options or {})
        assert r.status_code in (201, 202, 400), r.text
        deadline = time.time() + timeout
        while time.time() < deadline:
            model = self.api("GET", f"/users/{user}").json()
            server = model["servers"].get("")
            if server and server.get("ready"):
                return model
            if not server and r.status_code != 400 and time.time() > deadline - timeout + 5:
                return model
            time.sleep(0.5)
        raise TimeoutError(f"{user}'s server did not become ready")

    def stop(self, user: str) -> None:
        """Stop ``user``'s server."""
        self.api("DELETE", f"/users/{user}/server")
        for _ in range(120):
            if not self.api("GET", f"/users/{user}").json()["servers"]:
                return
            time.sleep(0.5)

    def user_token(self, user: str) -> str:
        """A new API token acting as ``user`` (for their server's REST API)."""
        r = self.api(
            "POST", f"/users/{user}/tokens", json={"note": "casa test", "expires_in": 3600}
        )
        assert r.status_code in (200, 201), r.text
        return r.json()["token"]


class Kernel:
    """A Python kernel in a user's server, driven through the Jupyter REST API and websocket."""

    def __init__(self, base: str, user: str, token: str):
        self.url = f"{base}/user/{user}"
        self.headers = {"Authorization": f"token {token}"}
        r = requests.post(f"{self.url}/api/kernels", headers=self.headers, json={"name": "python3"})
        assert r.status_code == 201, r.text
        self.id = r.json()["id"]
        ws_url = self.url.replace("http://", "ws://") + f"/api/kernels/{self.id}/channels"
        self.ws = websocket.create_connection(ws_url, header=self.headers, timeout=300)

    def execute(self, code: str, timeout: float = 300) -> dict:
        """Run ``code``; return {'stdout', 'error', 'data'} once the kernel is idle."""
        msg_id = uuid.uuid4().hex
        self.ws.send(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "test",
                       "session": uuid.uuid4().hex, "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell",
            "content": {"code": code, "silent": False, "store_history": False,
                        "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
        }))  # fmt: skip
        out = {"stdout": "", "error": None, "data": []}
        deadline = time.time() + timeout
        while time.time() < deadline:
            msg = json.loads(self.ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                out["stdout"] += content["text"]
            elif kind == "error":
                out["error"] = f"{content['ename']}: {content['evalue']}\n" + "\n".join(
                    content.get("traceback", [])
                )
            elif kind in ("execute_result", "display_data"):
                out["data"].append(content["data"])
            elif kind == "status" and content["execution_state"] == "idle":
                return out
        raise TimeoutError("the kernel did not finish")

    def close(self) -> None:
        """Shut the kernel down."""
        self.ws.close()
        requests.delete(f"{self.url}/api/kernels/{self.id}", headers=self.headers)


#: The terminal's control sequences (bracketed paste, colours), not part of what was printed.
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Terminal:
    """A terminal in a user's lab (terminado, as the lab's Terminal tab), driven through the
    Jupyter REST API and the terminal's websocket: what a user types, what the shell prints."""

    def __init__(self, base: str, user: str, token: str):
        self.url = f"{base}/user/{user}"
        self.headers = {"Authorization": f"token {token}"}
        r = requests.post(f"{self.url}/api/terminals", headers=self.headers, timeout=60)
        assert r.status_code == 200, r.text
        self.name = r.json()["name"]
        ws_url = self.url.replace("http://", "ws://") + f"/terminals/websocket/{self.name}"
        self.ws = websocket.create_connection(ws_url, header=self.headers, timeout=300)
        self.run("stty -echo; export PS1='' COLUMNS=200 NO_COLOR=1", timeout=60)

    def run(self, command: str, timeout: float = 300) -> tuple[int, str]:
        """Type ``command`` and Enter; its exit status and everything it printed."""
        marker = uuid.uuid4().hex
        self.ws.send(json.dumps(["stdin", f"{command}; echo {marker}$?{marker}\r"]))
        text = ""
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.ws.settimeout(max(deadline - time.time(), 0.1))
            msg = json.loads(self.ws.recv())
            if msg[0] == "stdout":
                text += msg[1]
            found = re.search(f"{marker}(\\d+){marker}", text)
            if found:
                printed = _ESCAPES.sub("", text[: found.start()]).replace("\r\n", "\n")
                return int(found[1]), printed.strip("\r\n") + "\n"
        raise TimeoutError(f"{command!r} did not finish in the terminal:\n{text}")

    def close(self) -> None:
        """Close the terminal."""
        self.ws.close()
        requests.delete(f"{self.url}/api/terminals/{self.name}", headers=self.headers, timeout=60)
