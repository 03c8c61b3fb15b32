"""The issuer's client: one request line to its Unix socket, one answer line back.

The issuer (:mod:`casa.services.issuer.service`) learns who is asking from the kernel
(``SO_PEERCRED``); an account gets tokens for itself only, the facility's own account and
root for any user. Every caller, from the CLI to the hub's spawner, asks through here.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

from casa.errors import ServiceError

#: The socket's name in the issuer's service folder.
SOCKET_NAME = "issuer.sock"
#: Seconds ``request_token`` waits for the issuer's answer.
ANSWER_TIMEOUT = 10.0


def request_token(
    path: Path, user: str | None = None, scopes: list[str] | None = None,
    lifetime: int | None = None, kind: str = "data",
) -> str:  # fmt: skip
    """Ask the issuer listening on ``path`` for a token (for the caller, or ``user`` if allowed).

    ``kind`` is ``"data"`` (storage scopes) or ``"gateway"`` (Dask Gateway credentials).
    ServiceError if the issuer is not running, refuses, or does not answer within
    ``ANSWER_TIMEOUT`` seconds.
    """
    request = {"user": user, "scopes": scopes, "lifetime": lifetime, "kind": kind}
    try:
        data = _exchange(path, json.dumps(request).encode() + b"\n", ANSWER_TIMEOUT)
    except (FileNotFoundError, ConnectionRefusedError):
        raise ServiceError(
            "the token issuer is not running: start the facility with 'casa up'"
        ) from None
    except TimeoutError:
        raise ServiceError(
            f"the token issuer did not answer within {ANSWER_TIMEOUT:g} s at {path}: see "
            "'casa status' and the issuer's log, and restart it with 'casa up'"
        ) from None
    except OSError as e:
        raise ServiceError(f"could not reach the token issuer at {path}: {e}") from None
    try:
        answer = json.loads(data)
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or not ("error" in answer or "token" in answer):
        raise ServiceError(
            f"the token issuer at {path} closed the connection without an answer: see its log "
            "and 'casa status'"
        )
    if "error" in answer:
        raise ServiceError(f"the issuer refused: {answer['error']}")
    return answer["token"]


def _exchange(path: Path, request: bytes, timeout: float) -> bytes:
    """Send one request line, read one answer line; TimeoutError past ``timeout`` in all."""
    deadline = time.monotonic() + timeout
    with _connect(path, deadline) as s:
        s.sendall(request)
        data = b""
        while not data.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            s.settimeout(left)
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


def _connect(path: Path, deadline: float) -> socket.socket:
    """A connection to the issuer, retried while its queue of waiting connections is full."""
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            s.connect(str(path))
            return s
        except BlockingIOError:  # the listen queue is full (a flood): wait for room
            s.close()
            if time.monotonic() >= deadline:
                raise TimeoutError from None
            time.sleep(0.02)
        except BaseException:
            s.close()
            raise
