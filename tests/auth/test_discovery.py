"""WLCG Bearer Token Discovery: one order of places, read, listed and stored in alike."""

from __future__ import annotations

import os
from pathlib import Path

from casa.auth.tokens import (
    discover_token,
    discovery_locations,
    discovery_places,
    store_token,
    token_file_name,
    token_store_path,
)


def test_the_order_is_wlcgs_and_every_helper_follows_it(tmp_path, monkeypatch):
    runtime, named = tmp_path / "run", tmp_path / "named"
    runtime.mkdir()
    uid_file = f"bt_u{os.getuid()}"
    assert token_file_name() == uid_file and token_file_name(1234) == "bt_u1234"
    env = {"BEARER_TOKEN": " from-env ", "BEARER_TOKEN_FILE": str(named),
           "XDG_RUNTIME_DIR": str(runtime)}  # fmt: skip
    labels = ["$BEARER_TOKEN", "$BEARER_TOKEN_FILE", f"{runtime}/{uid_file}", f"/tmp/{uid_file}"]
    assert discovery_locations(env) == labels
    assert [p.path for p in discovery_places(env)] == [
        None, named, runtime / uid_file, Path("/tmp") / uid_file,
    ]  # fmt: skip
    found = discover_token(env)
    assert (found.token, found.source) == ("from-env", "$BEARER_TOKEN")

    # Without $BEARER_TOKEN: the file $BEARER_TOKEN_FILE names, and only it, found or not.
    del env["BEARER_TOKEN"]
    assert token_store_path(env) == named
    store_token("in-xdg", runtime / uid_file)
    assert discover_token(env) is None
    store_token("named", named)
    assert discover_token(env).source == str(named)

    # Without it: $XDG_RUNTIME_DIR's file, which is also where a token is stored.
    del env["BEARER_TOKEN_FILE"]
    assert discovery_locations(env) == labels
    assert token_store_path(env) == runtime / uid_file
    assert (discover_token(env).token, discover_token(env).source) == ("in-xdg", labels[2])

    # Without that: /tmp (no file named for this test's UID is assumed there).
    del env["XDG_RUNTIME_DIR"]
    assert discovery_locations(env) == [labels[0], labels[1], labels[3]]
    assert token_store_path(env) == Path("/tmp") / uid_file
    # An $XDG_RUNTIME_DIR that does not exist is read from but never stored in.
    env["XDG_RUNTIME_DIR"] = str(tmp_path / "missing")
    assert token_store_path(env) == Path("/tmp") / uid_file
    assert discovery_locations(env)[2] == f"{tmp_path}/missing/{uid_file}"
