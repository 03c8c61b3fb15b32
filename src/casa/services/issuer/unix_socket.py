"""The issuer's Unix socket: one JSON request line in, one JSON answer line out, per connection.

Any local account may connect, so the server holds up against a flood from one of them: an
asyncio loop (an idle connection costs a few hundred bytes, not a thread), at most
``MAX_CONNECTIONS`` open connections per account (more for root and the issuer's own account,
which ask for many users), a total deadline for the request line (a slow sender cannot reset it
by trickling bytes), a bound on its length, and a strict request format. Every refusal is
answered with ``{"error": ...}`` where the peer can still read it and logged on one line, with
the log itself bounded per account.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import socket
import struct
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

#: Connections one account may hold open at once.
MAX_CONNECTIONS = 16
#: The same for root and the issuer's own account (the gateway and the hub mint for many users).
MAX_CONNECTIONS_PRIVILEGED = 1024
#: Connections the kernel queues for the issuer to accept, and how many it takes at a time.
BACKLOG = 1024
ACCEPTS_PER_TURN = 256
#: Seconds a connection has, from its start, to send its whole request line.
REQUEST_DEADLINE = 2.0
#: The longest request line read (a real request is a few hundred bytes).
MAX_REQUEST_BYTES = 16 * 1024
#: The fields of a request, each with its JSON type (null means the default).
REQUEST_FIELDS: dict[str, tuple[type, str]] = {
    "user": (str, "string"),
    "scopes": (list, "list of strings"),
    "lifetime": (int, "whole number of seconds"),
    "kind": (str, "string"),
}
#: At most this many log lines per account in each LOG_WINDOW seconds; the rest are counted.
LOG_LINES_PER_WINDOW = 20
LOG_WINDOW = 10.0

Answer = Callable[[int, dict], dict]


class BadRequest(ValueError):
    """A request line that is not a valid token request; its text is the answer's error."""


def parse_request(line: bytes) -> dict:
    """The request object of one request line; BadRequest saying what is wrong with it."""
    example = 'send one JSON object on one line, such as {"kind": "data"}'
    if not line.strip():
        raise BadRequest(f"empty request: {example}")
    try:
        request = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest(f"the request is not JSON: {example}") from None
    if not isinstance(request, dict):
        raise BadRequest(
            f"the request is a JSON {type(request).__name__}, not an object: {example}"
        )
    if not request:
        raise BadRequest(f"empty request: {example}")
    unknown = sorted(set(request) - set(REQUEST_FIELDS))
    if unknown:
        raise BadRequest(
            f"unknown request field(s) {', '.join(map(repr, unknown))}: the fields are "
            f"{', '.join(REQUEST_FIELDS)}"
        )
    for field, (kind, described) in REQUEST_FIELDS.items():
        value = request.get(field)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise BadRequest(f"request field {field!r} must be a {described} or null")
    if any(not isinstance(s, str) for s in request.get("scopes") or []):
        raise BadRequest("request field 'scopes' must be a list of strings")
    return request


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a Unix socket, as the kernel tells it."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


def account_name(uid: int) -> str:
    """``uid 1001 (ann)`` for the log."""
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


class BoundedLog:
    """One line per event on stderr, at most LOG_LINES_PER_WINDOW per account per LOG_WINDOW."""

    def __init__(self) -> None:
        self._window: dict[int, tuple[float, int, int]] = {}  # uid -> (start, lines, dropped)

    def write(self, uid: int, text: str) -> None:
        """Log ``text`` for ``uid`` unless its budget is spent (then count it)."""
        now = time.monotonic()
        start, lines, dropped = self._window.get(uid, (now, 0, 0))
        if now - start >= LOG_WINDOW:
            if dropped:
                self._line(f"{account_name(uid)}: {dropped} more line(s) not logged")
            start, lines, dropped = now, 0, 0
        if lines < LOG_LINES_PER_WINDOW:
            self._line(text)
            lines += 1
        else:
            dropped += 1
        self._window[uid] = (start, lines, dropped)

    @staticmethod
    def _line(text: str) -> None:
        sys.stderr.write(f"issuer: {text}\n")
        sys.stderr.flush()


class TokenSocketServer:
    """Serves ``answer(uid, request)`` on a Unix socket from its own thread and event loop."""

    def __init__(self, path: Path, answer: Answer, privileged: set[int]):
        self.path = path
        self._answer = answer
        self._privileged = privileged
        self._open: Counter[int] = Counter()
        self._log = BoundedLog()
        self._loop = asyncio.new_event_loop()
        self._tasks: set[asyncio.Task] = set()

    def start(self) -> None:
        """Listen (socket mode 0666: SO_PEERCRED decides what each caller gets) in a thread."""
        _raise_open_file_limit()
        self.path.unlink(missing_ok=True)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self.path))
        os.chmod(self.path, 0o666)
        self._listener.listen(BACKLOG)
        self._listener.setblocking(False)
        threading.Thread(target=self._run, name="issuer-socket", daemon=True).start()

    def stop(self) -> None:
        """Stop listening and remove the socket file."""
        self._loop.call_soon_threadsafe(self._loop.stop)
        self.path.unlink(missing_ok=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.add_reader(self._listener, self._accept)
        self._loop.run_forever()

    def limit(self, uid: int) -> int:
        """How many connections ``uid`` may hold open at once."""
        return MAX_CONNECTIONS_PRIVILEGED if uid in self._privileged else MAX_CONNECTIONS

    def _accept(self) -> None:
        """Take the waiting connections; refuse those over their account's limit at once.

        Refusing here, before any stream or task exists, keeps a flood cheap, so the queue of
        waiting connections (which every account shares) moves fast.
        """
        for _ in range(ACCEPTS_PER_TURN):
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # out of file descriptors: pause rather than spin
                sys.stderr.write(f"issuer: cannot accept connections for a moment: {e}\n")
                self._loop.remove_reader(self._listener)
                self._loop.call_later(0.5, self._loop.add_reader, self._listener, self._accept)
                return
            uid = peer_uid(conn)
            if self._open[uid] >= self.limit(uid):
                self._log.write(
                    uid, f"{account_name(uid)} refused: more than {self.limit(uid)} connections"
                )
                _answer_and_close(conn, f"more than {self.limit(uid)} connections at once")
                continue
            self._open[uid] += 1
            task = self._loop.create_task(self._serve(conn, uid))
            self._tasks.add(task)  # the loop keeps only weak references to its tasks
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, conn: socket.socket, uid: int) -> None:
        writer = None
        try:
            reader, writer = await asyncio.open_unix_connection(sock=conn, limit=MAX_REQUEST_BYTES)
            await self._one_request(reader, writer, uid)
        except (ConnectionError, asyncio.TimeoutError):
            pass  # the peer went away or does not read its answer: nothing left to tell it
        finally:
            self._open[uid] -= 1
            if writer is not None:
                writer.transport.abort()
            else:
                conn.close()

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, uid: int
    ) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), REQUEST_DEADLINE)
        except asyncio.TimeoutError:
            self._refuse(writer, uid, f"no request line within {REQUEST_DEADLINE:g} s")
            return
        except ValueError:  # the StreamReader's limit: no newline in MAX_REQUEST_BYTES
            self._refuse(writer, uid, f"a request line longer than {MAX_REQUEST_BYTES} bytes")
            return
        if not line.endswith(b"\n"):
            self._log.write(uid, f"{account_name(uid)} closed the connection before a request")
            return
        try:
            request = parse_request(line)
        except BadRequest as e:
            self._refuse(writer, uid, str(e))
            return
        try:
            answer = self._answer(uid, request)
        except Exception as e:  # one request's failure must not stop the others
            answer = {"error": "the issuer failed on this request: its log says why"}
            self._log.write(uid, f"{account_name(uid)}: minting failed: {e!r}")
        outcome = f"refused: {answer['error']}" if "error" in answer else "granted"
        self._log.write(
            uid,
            f"{account_name(uid)} asked for a {request.get('kind') or 'data'} token for "
            f"{request.get('user') or 'itself'}: {outcome}",
        )
        writer.write(json.dumps(answer).encode() + b"\n")
        await asyncio.wait_for(writer.drain(), REQUEST_DEADLINE)

    def _refuse(self, writer: asyncio.StreamWriter, uid: int, reason: str) -> None:
        self._log.write(uid, f"{account_name(uid)} refused: {reason}")
        # A short answer goes straight into the socket's buffer: the caller aborts the
        # connection after it, so a peer that never reads holds nothing open.
        writer.write(json.dumps({"error": reason}).encode() + b"\n")


def _answer_and_close(conn: socket.socket, reason: str) -> None:
    """Send ``{"error": reason}`` if the socket takes it at once, then close the connection."""
    try:
        conn.setblocking(False)
        conn.send(json.dumps({"error": reason}).encode() + b"\n")
    except OSError:
        pass
    conn.close()


def _raise_open_file_limit() -> None:
    """Let the issuer hold as many connections as the hard limit allows."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
