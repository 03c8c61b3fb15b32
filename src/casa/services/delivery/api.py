"""The REST API of the delivery service, as the ServiceX client (3.3) calls it.

Every route but ``GET /servicex`` and ``/health`` needs the caller's facility token as its
bearer (what the client sends from ``BEARER_TOKEN_FILE``): an ES256 token of this
facility's issuer, for this facility. A transform belongs to the user who asked for it;
another user's transform is answered as one that does not exist.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import time
import uuid

from aiohttp import web

from casa import __version__
from casa.auth.tokens import verify_token
from casa.errors import CasaError
from casa.facility import Facility
from casa.services.delivery.downloads import UrlSigner
from casa.services.delivery.records import (
    CANCELED,
    DONE_STATES,
    FILE_DONE,
    FILE_FAILED,
    SUBMITTED,
    DeliveryRecords,
    InputFile,
    Transform,
    iso,
)
from casa.services.delivery.transforms import Engine, resolve_inputs, user_catalog
from casa.services.s3.keys import ObjectStore
from casa.worker.func_adl_query import QASTLE, FuncADLError, check_func_adl, is_func_adl
from casa.worker.skim import FORMATS, QueryError, check_query

log = logging.getLogger("casa.delivery")

#: The code generators, by the name the client sends (``codegen``), with their "image".
CODE_GENERATORS = {"uproot-raw": "casa-uproot-raw", "uproot": "casa-func-adl-uproot"}
#: What this server can do, as the client asks (``GET /servicex``).
CAPABILITIES = ["poll_local_transformation_results", "generate_file_urls"]


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status)


class DeliveryAPI:
    """The routes, over the records, the engine and the object store."""

    def __init__(self, ctx: Facility, records: DeliveryRecords, engine: Engine,
                 store: ObjectStore, endpoint: str, public_key: bytes,
                 signer: UrlSigner):  # fmt: skip
        self.ctx = ctx
        self.signer = signer
        self.records = records
        self.engine = engine
        self.store = store
        self.endpoint = endpoint
        self.public_key = public_key

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors])
        app.add_routes([
            web.get("/health", self.health),
            web.get("/servicex", self.info),
            web.post("/servicex/transformation", self.submit),
            web.post("/servicex/transformation/file-urls", self.file_urls),
            web.get("/servicex/transformation", self.list_transforms),
            web.get("/servicex/transformation/{id}", self.status),
            web.get("/servicex/transformation/{id}/results", self.results),
            web.get("/servicex/transformation/{id}/cancel", self.cancel),
            web.delete("/servicex/transformation/{id}", self.delete),
            web.get("/servicex/datasets", self.datasets),
            web.get("/servicex/datasets/{id}", self.dataset),
            web.delete("/servicex/datasets/{id}", self.delete_dataset),
            web.get("/casa/transformation/{id}", self.record),
            web.get("/casa/files/{id}/{name}", self.download),
        ])  # fmt: skip
        return app

    @web.middleware
    async def _errors(self, request, handler):
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except CasaError as e:
            return _error(400, str(e))
        except Exception as e:  # a bug or a lost cluster: one sentence, the traceback logged
            log.exception("%s %s failed", request.method, request.path)
            return _error(500, f"the delivery service failed: {type(e).__name__}: {e} (see "
                               "its log, services/delivery/delivery.log)")  # fmt: skip

    # -- who is asking --------------------------------------------------------------
    def _user(self, request: web.Request) -> str:
        import jwt

        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise web.HTTPUnauthorized(
                text=json.dumps({"message": "send your facility token as the bearer "
                                            "(BEARER_TOKEN_FILE, from 'casa token issue')"}),
                content_type="application/json",
            )  # fmt: skip
        try:
            claims = verify_token(token, self.public_key, issuer=self.ctx.config.issuer_url,
                                  audience=self.ctx.config.facility.name)  # fmt: skip
        except jwt.PyJWTError as e:
            raise web.HTTPUnauthorized(
                text=json.dumps({"message": f"the token was refused: {e}; get a new one "
                                            "with 'casa token issue'"}),
                content_type="application/json",
            ) from None  # fmt: skip
        return claims["sub"]

    def _own(self, request: web.Request) -> Transform:
        user = self._user(request)
        t = self.records.get(request.match_info["id"])
        if t is None or t.owner != user:
            raise web.HTTPNotFound(
                text=json.dumps({"message": f"no transform {request.match_info['id']} of "
                                            f"{user}"}),
                content_type="application/json",
            )  # fmt: skip
        return t

    # -- routes ---------------------------------------------------------------------
    async def health(self, request):
        return web.json_response({"status": "ok", "service": "casa delivery"})

    async def info(self, request):
        return web.json_response({
            "app-version": __version__, "code-gen-image": CODE_GENERATORS,
            "capabilities": CAPABILITIES,
        })  # fmt: skip

    async def submit(self, request):
        user = self._user(request)
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return _error(400, "the request body must be JSON")
        if not isinstance(body, dict):
            return _error(400, "the request body must be a JSON object")
        codegen = body.get("codegen")
        if codegen not in CODE_GENERATORS:
            return _error(400, f"the code generator {codegen!r} is not one of this server's: "
                               f"{', '.join(CODE_GENERATORS)} (UprootRaw and FuncADL_Uproot "
                               "queries)")  # fmt: skip
        result_format = body.get("result-format", "root-file")
        if result_format not in FORMATS:
            return _error(400, f"the output format {result_format!r} is not one of "
                               f"{', '.join(FORMATS)}")  # fmt: skip
        if body.get("result-destination", "object-store") != "object-store":
            return _error(400, "results go to the object store here ('object-store')")
        try:
            if codegen == "uproot":  # FuncADL_Uproot: qastle text, parsed and translated here
                query = check_func_adl(body.get("selection"))
            else:
                query = check_query(json.loads(body.get("selection") or "null"))
        except ValueError as e:  # QueryError, FuncADLError, or a selection that is not JSON
            return _error(400, str(e) if isinstance(e, (QueryError, FuncADLError)) else
                          "the selection must be an Uproot-Raw query (JSON)")  # fmt: skip
        did, file_list = body.get("did"), body.get("file-list")
        urls = resolve_inputs(self.ctx, did, file_list, user)  # CasaError: 400, its sentence
        if not urls:
            return _error(400, f"{did or 'the file list'} holds no files")
        # The query on the first entry of the first file, on the user's cluster: a tree
        # or branch that is not there is said now, in one sentence, not as failed files.
        try:
            problem = await asyncio.get_running_loop().run_in_executor(
                None, self.engine.probe, user, urls[0], query
            )
        except CasaError as e:
            return _error(503, f"could not reach your Dask cluster: {e}")
        except Exception as e:  # the cluster went away, its workers lack casa's worker code
            self.engine.clusters.forget(user)
            log.exception("trying the query of %s on their cluster failed", user)
            return _error(503, f"could not try the query on your Dask cluster: "
                               f"{type(e).__name__}: {e}")  # fmt: skip
        if problem:
            return _error(400, problem)
        request_id = str(uuid.uuid4())
        key = self.store.grant(request_id)
        t = Transform(
            request_id=request_id, owner=user, did=did or f"file-list ({len(urls)} files)",
            selection=json.dumps(query), codegen=codegen, result_format=result_format,
            status=SUBMITTED, submit_time=time.time(), title=str(body.get("title") or ""),
            access_key=key.access_key, secret_key=key.secret_key,
            files=[InputFile(index=i, url=u) for i, u in enumerate(urls)],
        )  # fmt: skip
        self.store.create_bucket(request_id)
        self.records.add(t)
        self.engine.start(request_id)
        return web.json_response({"request_id": request_id})

    def _status(self, t: Transform) -> dict:
        done, failed = t.count(FILE_DONE), t.count(FILE_FAILED)
        return {
            "request_id": t.request_id, "did": t.did, "did_id": 0, "title": t.title or None,
            "selection": t.query[QASTLE] if is_func_adl(t.query) else t.selection,
            "tree-name": None, "image": CODE_GENERATORS[t.codegen],
            "result-destination": "object-store", "result-format": t.result_format,
            "generated-code-cm": "", "status": t.status, "app-version": __version__,
            "files": len(t.files), "files-completed": done, "files-failed": failed,
            "files-remaining": len(t.files) - done - failed,
            "submit-time": iso(t.submit_time), "finish-time": iso(t.finish_time),
            "minio-endpoint": self.endpoint, "minio-secured": False,
            "minio-access-key": t.access_key, "minio-secret-key": t.secret_key,
            "log-url": None, "error": t.error or None,
        }  # fmt: skip

    async def list_transforms(self, request):
        user = self._user(request)
        return web.json_response(
            {"requests": [self._status(t) for t in self.records.of_owner(user)]}
        )

    async def status(self, request):
        return web.json_response(self._status(self._own(request)))

    async def results(self, request):
        t = self._own(request)
        later = request.query.get("later_than")
        since = 0.0
        if later:
            try:
                moment = datetime.datetime.fromisoformat(later)
            except ValueError:
                return _error(400, f"later_than={later!r} is not an ISO 8601 time")
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=datetime.timezone.utc)
            since = moment.timestamp()
        results = []
        for f in t.files:
            if f.state == FILE_DONE and (f.finished or 0) > since:
                results.append({
                    "transform_status": "success", "s3-object-name": f.object_name,
                    "created_at": iso(f.finished), "total-bytes": f.size,
                    "file-path": f.url,
                })  # fmt: skip
            elif f.state == FILE_FAILED and (f.finished or 0) > since:
                results.append(
                    {
                        "transform_status": "failure",
                        "file-path": f.url,
                        "created_at": iso(f.finished),
                        "reason": f.reason,
                    }
                )
        return web.json_response({"results": results})

    async def file_urls(self, request):
        """Signed plain-HTTP URLs of a transform's results (``generate_file_urls``):
        ``{"uris": {name: [url, headers, expiry]}}``, for the names in ``file_list`` (all of
        the bucket's when it is left out). No header is needed: the URL is its own proof."""
        user = self._user(request)
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return _error(400, "the request body must be JSON")
        if not isinstance(body, dict) or not isinstance(body.get("request_id"), str):
            return _error(400, 'send {"request_id": ID, "file_list": [names]}')
        t = self.records.get(body["request_id"])
        if t is None or t.owner != user:
            return _error(404, f"no transform {body['request_id']} of {user}")
        objects = self.store.objects(t.request_id)
        names = body.get("file_list") or sorted(objects)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            return _error(400, "file_list must be a list of the transform's object names")
        missing = [n for n in names if n not in objects]
        if missing:
            return _error(404, f"transform {t.request_id} has no result named "
                               f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")  # fmt: skip
        uris = {}
        for name in names:
            url, expires = self.signer.url(t.request_id, name)
            uris[name] = [url, {}, iso(expires)]
        return web.json_response({"uris": uris})

    async def download(self, request):
        """One result by a signed URL (see :mod:`casa.services.delivery.downloads`)."""
        request_id, name = request.match_info["id"], request.match_info["name"]
        problem = self.signer.problem(request_id, name, request.query.get("expires", ""),
                                      request.query.get("signature", ""))  # fmt: skip
        if problem:
            return _error(403, problem)
        if self.records.get(request_id) is None or name not in self.store.objects(request_id):
            return _error(404, f"transform {request_id} has no result {name} (any more)")
        return web.FileResponse(self.store.bucket_dir(request_id) / name)

    async def cancel(self, request):
        t = self._own(request)
        if t.status in DONE_STATES:
            return _error(400, f"transform {t.request_id} is {t.status} already")
        self.records.set_status(t.request_id, CANCELED, "canceled by its owner")
        return web.json_response({"message": f"canceled transform {t.request_id}"})

    async def delete(self, request):
        t = self._own(request)
        if t.status not in DONE_STATES:
            self.records.set_status(t.request_id, CANCELED, "deleted by its owner")
        self.store.delete_bucket(t.request_id)
        self.records.delete(t.request_id)
        return web.json_response({"message": f"deleted transform {t.request_id}"})

    async def record(self, request):
        """casa's own record of a transform: what ran, what the cache served, each file."""
        t = self._own(request)
        transformed, from_cache = self.records.work_counts(t.request_id)
        return web.json_response({
            "request_id": t.request_id, "status": t.status, "error": t.error or None,
            "transformed": transformed, "from_cache": from_cache,
            "files": [{"url": f.url, "state": f.state, "attempts": f.attempts,
                       "reason": f.reason or None, "cached": f.cached,
                       "object": f.object_name or None, "events": f.events}
                      for f in t.files],
        })  # fmt: skip

    async def datasets(self, request):
        user = self._user(request)
        return web.json_response({"datasets": [self._dataset(i, d) for i, d in
                                               enumerate(self._catalog(user), 1)]})  # fmt: skip

    async def dataset(self, request):
        user = self._user(request)
        for i, d in enumerate(self._catalog(user), 1):
            if str(i) == request.match_info["id"]:
                return web.json_response(self._dataset(i, d))
        return _error(404, f"no dataset {request.match_info['id']}")

    async def delete_dataset(self, request):
        self._user(request)
        return _error(403, "datasets are the facility's catalog: remove one with 'casa "
                           "datasets remove NAME' (an administrator's command)")  # fmt: skip

    def _catalog(self, user: str):
        """The datasets ``user`` may read (the public ones and their own)."""
        return user_catalog(self.ctx, user).list()

    def _dataset(self, i: int, d) -> dict:
        now = iso(time.time())
        return {
            "id": i, "name": f"casa://{d.name}", "did_finder": "casa", "n_files": len(d.files),
            "size": sum(f.bytes for f in d.files), "events": sum(f.events for f in d.files),
            "last_used": now, "last_updated": now, "lookup_status": "complete",
            "is_stale": False,
        }  # fmt: skip
