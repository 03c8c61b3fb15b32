"""Running transforms: each input file is one task on the owner's own Dask cluster.

A transform's files are first looked at on that cluster, with the owner's account and
token (:func:`casa.worker.skim.file_identity`): a file the owner may not read fails with
the reason, and is never served from the shared cache. A file whose result is cached is
linked into the transform's bucket at once; the others are skimmed
(:func:`casa.worker.skim.skim_file`), each result kept in the cache and linked into the
bucket. A task that fails (its worker killed, the storage down) is tried again, up to
``delivery.file_attempts`` times in all; a query that cannot run on a file fails that file
at once. Each input file yields one result or one failure. A transform in which no file
finishes for ``delivery.stall_timeout`` seconds is failed as stalled.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qs, urlsplit

from casa.errors import CasaError, UsageError
from casa.facility import Facility
from casa.services.delivery.cache import ResultCache, result_key
from casa.services.delivery.records import (
    CANCELED,
    COMPLETE,
    FATAL,
    FILE_DONE,
    FILE_FAILED,
    FILE_RUNNING,
    RUNNING,
    DeliveryRecords,
    Transform,
)
from casa.services.s3.keys import ObjectStore
from casa.worker.skim import FORMATS, probe_task, skim_task

log = logging.getLogger("casa.delivery")

#: The dataset-identifier scheme of casa's catalog: ``casa://NAME`` (``?files=N``: the first N).
CASA_SCHEME = "casa"
#: How often a running transform with no file finishing looks for cancellation and stalls
#: (a file that finishes is taken at once).
POLL_SECONDS = 0.5


def user_catalog(ctx: Facility, user: str):
    """The catalog as ``user`` sees it: the public datasets and their own (another user's
    private dataset is not there, not even by name)."""
    from casa.data.exports import ExportedCatalog

    return ExportedCatalog(ctx.paths, user)


def resolve_inputs(ctx: Facility, did: str | None, file_list: list | None,
                   user: str) -> list[str]:  # fmt: skip
    """The input files of ``user``'s request: a casa dataset's (``casa://NAME``, one they
    may read) or the list given."""
    if file_list is not None:
        if (
            not isinstance(file_list, list)
            or not file_list
            or not all(isinstance(f, str) and f for f in file_list)
        ):
            raise UsageError("'file-list' must be a list of file paths or root:// URLs")
        return list(file_list)
    if not did:
        raise UsageError("a request needs a dataset ('did', such as casa://NAME) or a 'file-list'")
    parts = urlsplit(did)
    if parts.scheme != CASA_SCHEME:
        if parts.scheme == "rucio" or (not parts.scheme and ":" in did):
            raise UsageError(
                f"{did!r} is a Rucio dataset, and this facility has no Rucio: ask for one of its "
                "datasets (casa://NAME, 'casa datasets list' names them) or a list of files"
            )
        raise UsageError(
            f"{did!r} is not a dataset this facility knows: ask for casa://NAME (one of "
            "'casa datasets list') or give a list of files"
        )
    name = parts.netloc + parts.path
    dataset = user_catalog(ctx, user).get(name)  # DataError naming those they may read
    urls = [f.url for f in dataset.files]
    limit = parse_qs(parts.query).get("files")
    if limit:
        try:
            urls = urls[: max(0, int(limit[0]))]
        except ValueError:
            raise UsageError(f"'?files=' in {did!r} must be a whole number") from None
    return urls


def object_name(url: str, index: int, result_format: str) -> str:
    """The name of input file ``index``'s result in its transform's bucket."""
    stem = PurePosixPath(urlsplit(url).path).stem or "file"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)[:80]
    return f"{safe}_{index:04d}{FORMATS[result_format]}"


class UserClusters:
    """A connection to each user's own Dask cluster on the gateway, made on first need."""

    def __init__(self, ctx: Facility, workers: int):
        self.ctx = ctx
        self.workers = workers
        self._lock = threading.Lock()
        self._clients: dict[str, object] = {}

    def client(self, user: str):
        """A ``distributed.Client`` of ``user``'s cluster (their running one of casa's
        environment, or a new one with ``delivery.workers`` workers)."""
        with self._lock:
            client = self._clients.get(user)
            if client is not None and client.status == "running":
                return client
            client = self._connect(user)
            self._clients[user] = client
            return client

    def _connect(self, user: str):
        from casa.compute.gateway import find_or_create_cluster, gateway_client
        from casa.services.hub.config import user_env_prefix

        gateway = gateway_client(self.ctx, token=self.ctx.request_token(user=user, kind="gateway"))
        # The users' environment (their notebooks' and terminal's), which every account may
        # run and which holds casa's worker code; not the service's own. A running cluster of
        # the user's in it, or in one of their own environments layered on it, serves too:
        # its workers import casa as well, and a user's cores are not spent twice.
        prefix = user_env_prefix(self.ctx)
        env = str(prefix) if (prefix / "pyvenv.cfg").exists() else ""
        cluster = _usable_cluster(gateway, env) or find_or_create_cluster(gateway, env=env)
        client = cluster.get_client(set_as_default=False)
        if not client.scheduler_info().get("workers"):
            cluster.scale(self.workers)
        client.wait_for_workers(1, timeout=180)
        return client

    def forget(self, user: str) -> None:
        with self._lock:
            client = self._clients.pop(user, None)
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def close(self) -> None:
        for user in list(self._clients):
            self.forget(user)


def _usable_cluster(gateway, env: str):
    """The user's first running cluster whose workers have casa's worker code: of ``env``
    (the users' environment) or an environment layered on it, of the facility's own
    environment (this service's: the one ``casa run`` and ``casa demo`` make clusters of
    when run from it), or of the gateway's default."""
    from casa.compute.gateway import caller_environment
    from casa.lab.environments import is_layered_on

    known = {env, caller_environment(), ""}
    for report in gateway.list_clusters():
        theirs = dict(report.options or {}).get("python_env") or ""
        if theirs in known or (env and theirs and is_layered_on(Path(theirs), Path(env))):
            return gateway.connect(report.name)
    return None


class Engine:
    """Runs every transform of the delivery service, one thread each."""

    def __init__(self, ctx: Facility, records: DeliveryRecords, store: ObjectStore,
                 cache: ResultCache, clusters: UserClusters):  # fmt: skip
        self.ctx = ctx
        self.records = records
        self.store = store
        self.cache = cache
        self.clusters = clusters
        self.settings = ctx.config.delivery
        self._threads: dict[str, threading.Thread] = {}

    def probe(self, owner: str, url: str, query: list[dict]) -> str | None:
        """Why ``query`` cannot run on ``url`` for ``owner`` (None if it can)."""
        client = self.clusters.client(owner)
        return client.submit(probe_task, url, query, pure=False).result(timeout=120)

    def start(self, request_id: str) -> None:
        thread = threading.Thread(target=self._run, args=(request_id,), daemon=True,
                                  name=f"transform-{request_id}")  # fmt: skip
        self._threads[request_id] = thread
        thread.start()

    def resume_unfinished(self) -> None:
        """Start again the transforms a previous run of the service left unfinished."""
        for t in self.records.unfinished():
            self.start(t.request_id)

    # -- one transform ----------------------------------------------------------------
    def _run(self, request_id: str) -> None:
        t = self.records.get(request_id)
        if t is None:
            return
        try:
            self.records.set_status(request_id, RUNNING)
            self._transform(t)
        except CasaError as e:
            self.records.set_status(request_id, FATAL, str(e))
        except Exception as e:  # the cluster went away, the gateway refused: say so, once
            log.exception("transform %s failed", request_id)
            self.records.set_status(request_id, FATAL, f"{type(e).__name__}: {e}")
            self.clusters.forget(t.owner)
        finally:
            self._threads.pop(request_id, None)

    def _canceled(self, request_id: str) -> bool:
        t = self.records.get(request_id)
        return t is None or t.status == CANCELED

    def _transform(self, t: Transform) -> None:
        client = self.clusters.client(t.owner)
        bucket = self.store.create_bucket(t.request_id)
        query = t.query
        pending = [f for f in t.files if f.state not in (FILE_DONE, FILE_FAILED)]
        # Each file's identity, read on the owner's cluster as the owner.
        from casa.worker.skim import file_identity

        looks = {f.index: client.submit(file_identity, f.url, pure=False) for f in pending}
        tasks: dict = {}
        began = time.monotonic()
        for f in pending:
            waited = time.monotonic() - began
            try:
                identity = looks[f.index].result(
                    timeout=max(1.0, self.settings.stall_timeout - waited)
                )
            except TimeoutError:
                client.cancel(list(looks.values()))
                self._stalled(t)
                return
            except Exception as e:  # noqa: BLE001 - the file's own failure, said per file
                self._fail(t, f.index, _reason(e))
                continue
            began = time.monotonic()
            identity = self._storage_identity(f.url) or identity
            key = result_key(t.codegen, query, t.result_format, f.url, identity)
            self.records.update_file(t.request_id, f.index, identity=identity)
            hit = self.cache.lookup(key, t.result_format)
            if hit is not None:
                path, entry = hit
                name = object_name(f.url, f.index, t.result_format)
                _link(path, bucket / name)
                self.records.update_file(t.request_id, f.index, state=FILE_DONE, cached=True,
                                         object_name=name, size=entry.size,
                                         events=entry.events, finished=time.time())  # fmt: skip
                self.records.count_work(t.request_id, from_cache=1)
                continue
            tasks[self._submit(client, t, f.index, f.url, query, f.attempts)] = (f, key, identity)
        last_progress = time.monotonic()
        while tasks:
            if self._canceled(t.request_id):
                client.cancel(list(tasks))
                return
            # As soon as one file is done, or after a poll with none.
            done = _first_done(client, list(tasks), POLL_SECONDS)
            if not done:
                if time.monotonic() - last_progress > self.settings.stall_timeout:
                    client.cancel(list(tasks))
                    self._stalled(t)
                    return
                continue
            last_progress = time.monotonic()
            for fut in done:
                f, key, identity = tasks.pop(fut)
                attempts = f.attempts + 1
                f.attempts = attempts
                if fut.status == "error":
                    error = fut.exception()
                    if attempts < self.settings.file_attempts:
                        log.info(
                            "%s: file %s failed (%s), trying again", t.request_id, f.url, error
                        )
                        tasks[self._submit(client, t, f.index, f.url, query, attempts)] = (
                            f,
                            key,
                            identity,
                        )
                    else:
                        self._fail(t, f.index, _reason(error), attempts)
                    continue
                answer = fut.result()
                if "error" in answer:
                    self._fail(t, f.index, answer["error"], attempts)
                    continue
                name = object_name(f.url, f.index, t.result_format)
                path = self.cache.store(key, t.result_format, answer["data"], f.url, identity,
                                        answer["events"], evict=False)  # fmt: skip
                _link(path, bucket / name)  # before the cache may let the result go
                self.cache.evict()
                self.records.update_file(t.request_id, f.index, state=FILE_DONE, attempts=attempts,
                                         object_name=name, size=len(answer["data"]),
                                         events=answer["events"], finished=time.time())  # fmt: skip
                self.records.count_work(t.request_id, transformed=1)
        self.records.set_status(t.request_id, COMPLETE)

    def _storage_identity(self, url: str) -> str | None:
        """Size and modification time of a file of this facility's storage, on its disk.

        Through the cache a file's modification time is the cache's copy's once it holds
        some of it, so the identity the owner's task read would change once, and the first
        results would never be found again. The owner's task has checked that they may read
        it; the storage itself says what it is. None for other files (or storage elsewhere).
        """
        from casa.names import path_of_url

        path = path_of_url(url)
        if path is None or not url.startswith(("root://", "roots://")):
            return None
        authority = url.split("://", 1)[1].split("/", 1)[0]
        config = self.ctx.config
        ours = {f"{h}:{config.cache.port}" for h in config.cache_hosts()}
        ours.add(f"{config.host_of('origin')}:{config.origin.port}")
        if authority not in ours:
            return None
        try:
            info = (self.ctx.paths.storage / path.lstrip("/")).stat()
        except OSError:
            return None
        return f"{info.st_size}:{info.st_mtime_ns}"

    def _stalled(self, t: Transform) -> None:
        log.warning("%s: no progress in %s s, failed as stalled", t.request_id,
                    self.settings.stall_timeout)  # fmt: skip
        self.records.set_status(
            t.request_id, FATAL,
            f"no file finished in {self.settings.stall_timeout} s (delivery.stall_timeout): "
            "the transform is failed as stalled",
        )  # fmt: skip

    def _submit(self, client, t: Transform, index: int, url: str, query, attempts: int):
        self.records.update_file(t.request_id, index, state=FILE_RUNNING, attempts=attempts)
        return client.submit(skim_task, url, query, t.result_format, pure=False,
                             key=f"skim-{t.request_id}-{index}-{attempts}")  # fmt: skip

    def _fail(self, t: Transform, index: int, reason: str, attempts: int | None = None) -> None:
        values = {"state": FILE_FAILED, "reason": reason, "finished": time.time()}
        if attempts is not None:
            values["attempts"] = attempts
        self.records.update_file(t.request_id, index, **values)


def _reason(error: BaseException | None) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".strip().rstrip(":")


def _link(source, target) -> None:
    """``target`` as another name of ``source`` (a copy across filesystems)."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _first_done(client, futures: list, timeout: float) -> list:
    """The futures among ``futures`` (of ``client``) that are done, waiting up to ``timeout``
    seconds for one."""
    from distributed import wait

    try:
        with client.as_current():  # wait() asks for the current client, not the futures'
            wait(futures, timeout=timeout, return_when="FIRST_COMPLETED")
    except TimeoutError:
        return []
    return [fut for fut in futures if fut.done()]
