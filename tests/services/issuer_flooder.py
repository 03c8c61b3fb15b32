"""An attacker of the issuer's socket, run as a real account: ``python3 issuer_flooder.py SOCKET
CONNECTIONS SECONDS``. Standard library only (it runs under Debian's Python as any account).

It keeps up to CONNECTIONS connections open for SECONDS, each sending one of: nothing, an empty
line, ``{}``, garbage, JSON that is no request, an unfinished line, an over-long line, or a
slow trickle of spaces (a slow loris). It prints one JSON object counting what it saw, above all
``tokens`` (answers with a token: should be 0) and ``held_longest`` (seconds the issuer kept one
of its connections open).
"""

from __future__ import annotations

import json
import resource
import select
import socket
import sys
import time
from collections import Counter

PAYLOADS = [
    b"",  # nothing at all: an idle connection
    b"\n",
    b"{}\n",
    b"garbage\n",
    b"[1, 2]\n",
    b'{"user": 5}\n',
    b'{"kind": "data", "admin": true}\n',
    b'{"kind": "da',  # an unfinished line
    b"x" * 20_000,  # longer than any request
    None,  # a slow loris: one space every TRICKLE seconds, never a newline
]
TRICKLE = 0.3


def main(path: str, connections: int, seconds: float) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    seen: Counter[str] = Counter()
    opened: dict[socket.socket, tuple[float, bytes | None]] = {}
    buffers: dict[socket.socket, bytes] = {}
    held_longest = 0.0
    made = 0
    end = time.monotonic() + seconds
    last_trickle = 0.0
    poller = select.poll()
    by_fd: dict[int, socket.socket] = {}
    while time.monotonic() < end:
        while len(opened) < connections and time.monotonic() < end:
            payload = PAYLOADS[made % len(PAYLOADS)]
            made += 1
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(1)
            try:
                s.connect(path)
                if payload:
                    s.sendall(payload)
            except OSError as e:
                seen[f"connect or send failed: {type(e).__name__}"] += 1
                s.close()
                continue
            s.setblocking(False)
            opened[s] = (time.monotonic(), payload)
            by_fd[s.fileno()] = s
            poller.register(s, select.POLLIN)
            buffers[s] = b""
        now = time.monotonic()
        if now - last_trickle > TRICKLE:
            last_trickle = now
            for s, (_, payload) in opened.items():
                if payload is None:
                    try:
                        s.send(b" ")
                    except OSError:
                        pass
        for fd, _ in poller.poll(50):
            s = by_fd[fd]
            try:
                chunk = s.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                chunk = b""
            buffers[s] += chunk
            if chunk and not buffers[s].endswith(b"\n"):
                continue
            started, _ = opened.pop(s)
            poller.unregister(s)
            del by_fd[fd]
            held_longest = max(held_longest, time.monotonic() - started)
            answer = buffers.pop(s)
            s.close()
            if not answer:
                seen["closed without an answer"] += 1
            elif b'"token"' in answer:
                seen["tokens"] += 1
            elif b'"error"' in answer:
                seen["errors"] += 1
            else:
                seen["other answers"] += 1
    now = time.monotonic()
    for s, (started, _) in opened.items():
        held_longest = max(held_longest, now - started)
        s.close()
    print(json.dumps({"connections": made, "held_longest": held_longest, **seen}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))
