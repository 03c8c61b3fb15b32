"""The delivery service through the unmodified ServiceX client (servicex 3.3), on the real
gateway, cache and S3 store: results checked against uproot reading the same files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import urllib.error
import urllib.request
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot

from casa.data.files import inspect_root_file
from casa.generate.generator import generate_dataset

pytestmark = pytest.mark.skipif(
    shutil.which("xrootd") is None and not os.environ.get("CI"),
    reason="xrootd is not installed (make install puts it in place with apt)",
)

#: The query every test asks for: two columns of events with two muons above 20 GeV.
QUERY = [{"treename": "Events", "filter_name": ["MET_pt", "Muon_pt"],
          "cut": "count_nonzero(Muon_pt > 20, axis=1) >= 2"}]  # fmt: skip


@pytest.fixture(scope="module")
def dv(tmp_path_factory):
    from conftest import new_facility_home, stop_everything

    f = new_facility_home(
        '[gateway]\nbackend = "local"\n[delivery]\nworkers = 2\nstall_timeout = 15\n'
    )
    f.supervisor().up()
    data = tmp_path_factory.mktemp("dv-data")
    generate_dataset(data, 8_000, 2, seed=17, workers=1)
    f.casa("datasets", "add", "sim", data, "--store", check=True)
    ctx = f.ctx()
    # A file only ann may read: her own area of the storage.
    (private,) = ctx.storage().store(
        "mine", [inspect_root_file(sorted(data.glob("*.root"))[0], "Events")], user="ann"
    )
    ctx.catalog().add_files("mine", [private])  # ann's private dataset
    f.private_url = private.url
    f.sim_urls = [d.url for d in ctx.catalog().get("sim").files]
    f.local_files = sorted(str(p) for p in data.glob("*.root"))
    yield f
    f.supervisor().down()
    stop_everything(f.home)


def _as_user(dv, user: str, tmp: Path) -> Path:
    """A working folder of ``user``: their token file and their servicex.yaml (with their
    own local cache, as in their home)."""
    folder = tmp / user
    folder.mkdir(exist_ok=True)
    token = dv.ctx().request_token(user=user)
    (folder / "token").write_text(token)
    (folder / "servicex.yaml").write_text(
        f"api_endpoints:\n  - endpoint: http://127.0.0.1:{dv.ports['delivery']}\n"
        f"    name: casa\ndefault-endpoint: casa\ncache-path: {folder / 'cache'}\n"
    )
    return folder


def _deliver(folder: Path, dataset, query=QUERY, result_format=None, **options):
    from servicex import dataset as sx_dataset  # noqa: F401 - the client's own classes
    from servicex import deliver
    from servicex import query as sx_query

    q = sx_query.UprootRaw(query) if isinstance(query, list) else query  # else FuncADL's
    sample = {"Name": "skim", "Dataset": dataset, "Query": q}
    if result_format:
        sample["Query"] = q
        spec = {"General": {"OutputFormat": result_format}, "Sample": [sample]}
    else:
        spec = {"Sample": [sample]}
    os.environ["BEARER_TOKEN_FILE"] = str(folder / "token")
    try:
        return deliver(spec, config_path=str(folder / "servicex.yaml"), progress_bar="none",
                       **options)["skim"]  # fmt: skip
    finally:
        os.environ.pop("BEARER_TOKEN_FILE", None)


def _expected(paths: list[str]) -> ak.Array:
    """The query's answer from uproot reading the inputs directly."""
    parts = []
    for p in paths:
        a = uproot.open(p)["Events"].arrays(["MET_pt", "Muon_pt"])
        parts.append(a[ak.count_nonzero(a.Muon_pt > 20, axis=1) >= 2])
    return ak.concatenate(parts)


def _api(dv, method: str, path: str, token: str | None, body=None):
    request = urllib.request.Request(
        f"http://127.0.0.1:{dv.ports['delivery']}{path}", method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json",
                 **({"Authorization": f"Bearer {token}"} if token else {})},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def _request_id(path: str) -> str:
    """The request id the client files its downloads under (its cache folder's name)."""
    return Path(path).parent.name


def test_a_casa_dataset_and_a_file_list_in_both_formats_match_uproot(dv, tmp_path):
    from servicex import dataset

    ann = _as_user(dv, "ann", tmp_path)
    roots = _deliver(ann, dataset.GenericDataSet("casa", "sim"))
    assert len(roots) == 2 and all(p.endswith(".root") for p in roots)
    got = ak.concatenate([uproot.open(p)["Events"].arrays() for p in sorted(roots)])
    want = _expected(dv.local_files)
    assert len(got) == len(want) > 0
    assert np.array_equal(ak.to_numpy(got.MET_pt), ak.to_numpy(want.MET_pt))
    assert ak.all(ak.flatten(got.Muon_pt) == ak.flatten(want.Muon_pt))

    import pyarrow.parquet as pq

    parquets = _deliver(ann, dataset.FileList(dv.sim_urls), result_format="parquet")
    assert len(parquets) == 2 and all(p.endswith(".parquet") for p in parquets)
    table = ak.concatenate([ak.from_arrow(pq.read_table(p)) for p in sorted(parquets)])
    assert np.array_equal(ak.to_numpy(table.MET_pt), ak.to_numpy(want.MET_pt))


def test_a_func_adl_query_through_the_client_matches_uproot(dv, tmp_path):
    from servicex import dataset
    from servicex import query as sx_query

    ann = _as_user(dv, "ann", tmp_path)
    q = (sx_query.FuncADL_Uproot().FromTree("Events")
         .Where(lambda e: e.MET_pt > 30)
         .Select(lambda e: {"met": e.MET_pt, "mu": e.Muon_pt}))  # fmt: skip
    files = _deliver(ann, dataset.GenericDataSet("casa", "sim"), query=q)
    assert len(files) == 2
    got = ak.concatenate([uproot.open(p)["servicex"].arrays() for p in sorted(files)])
    parts = [uproot.open(p)["Events"].arrays(["MET_pt", "Muon_pt"]) for p in dv.local_files]
    want = ak.concatenate([a[a.MET_pt > 30] for a in parts])
    assert len(got) == len(want) > 0
    assert np.array_equal(ak.to_numpy(got.met), ak.to_numpy(want.MET_pt))
    assert ak.all(ak.flatten(got.mu) == ak.flatten(want.Muon_pt))

    # A branch the files do not have, a tree they do not have, qastle that does not parse:
    # one sentence each when the request is made.
    token = dv.ctx().request_token(user="ann")
    for bad, said in (
        (sx_query.FuncADL_Uproot().FromTree("Events").Select(lambda e: {"x": e.NoSuch}),
         "NoSuch not in fields"),
        (sx_query.FuncADL_Uproot().FromTree("Nope").Select(lambda e: {"x": e.MET_pt}),
         "not found: 'Nope'"),
        ("(call Select (", "does not translate"),
    ):  # fmt: skip
        selection = bad if isinstance(bad, str) else bad.generate_selection_string()
        code, answer = _api(dv, "POST", "/servicex/transformation", token,
                            {"did": "casa://sim", "selection": selection, "codegen": "uproot",
                             "result-format": "root-file"})  # fmt: skip
        assert code == 400 and said in answer["message"], answer


def test_a_second_user_is_served_from_the_shared_cache_but_never_a_file_they_may_not_read(
    dv, tmp_path, caplog
):
    from servicex import dataset

    ann, anna = _as_user(dv, "ann", tmp_path), _as_user(dv, "anna", tmp_path)
    query = [{**QUERY[0], "cut": "count_nonzero(Muon_pt > 25, axis=1) >= 2"}]
    first = _deliver(ann, dataset.FileList(dv.sim_urls), query=query)
    # The client's own local cache still answers its user: no new request reaches the service.
    ann_token = (ann / "token").read_text()
    asked = len(_api(dv, "GET", "/servicex/transformation", ann_token)[1]["requests"])
    assert sorted(_deliver(ann, dataset.FileList(dv.sim_urls), query=query)) == sorted(first)
    assert len(_api(dv, "GET", "/servicex/transformation", ann_token)[1]["requests"]) == asked
    second = _deliver(anna, dataset.FileList(dv.sim_urls), query=query)
    anna_token = (anna / "token").read_text()
    status, record = _api(dv, "GET", f"/casa/transformation/{_request_id(second[0])}",
                          anna_token)  # fmt: skip
    assert status == 200, record
    assert (record["transformed"], record["from_cache"]) == (0, 2), record  # nothing ran again
    assert sorted(Path(p).read_bytes() for p in first) == sorted(
        Path(p).read_bytes() for p in second
    )

    # ann's own file: hers; anna ("ann" is a prefix of her name) is refused it, cached or not.
    mine = _deliver(ann, dataset.FileList([dv.private_url]), query=query)
    assert len(mine) == 1
    # Asked alone, it is refused at once, in one sentence (the query is tried on it first).
    with pytest.raises(ValueError, match="cannot read .*ann~.*permission denied"):
        _deliver(anna, dataset.FileList([dv.private_url]), query=query, return_exceptions=False)
    # Behind a file she may read, it fails alone, with its reason, and is never served to
    # her from the cache that holds its result.
    caplog.clear()
    _deliver(anna, dataset.FileList([dv.sim_urls[0], dv.private_url]), query=query)
    assert "completed with failures: 1/2 files failed" in caplog.text  # what the client says
    status, listing = _api(dv, "GET", "/servicex/transformation", anna_token)
    refused = [r for r in listing["requests"] if r["files-failed"]]
    assert len(refused) == 1
    status, record = _api(dv, "GET", f"/casa/transformation/{refused[0]['request_id']}",
                          anna_token)  # fmt: skip
    readable, private = record["files"]
    assert readable["state"] == "done" and readable["cached"]
    assert private["state"] == "failed" and not private["cached"]
    assert "permission denied" in private["reason"], private
    assert (record["transformed"], record["from_cache"]) == (0, 1)


def test_tokens_owners_and_bad_queries_are_checked_in_one_sentence(dv, tmp_path):
    from servicex import dataset

    ann = _as_user(dv, "ann", tmp_path)
    ann_token, anna_token = (ann / "token").read_text(), dv.ctx().request_token(user="anna")
    body = {"title": "t", "did": "casa://sim", "selection": json.dumps(QUERY),
            "codegen": "uproot-raw", "result-destination": "object-store",
            "result-format": "root-file"}  # fmt: skip
    assert _api(dv, "POST", "/servicex/transformation", None, body)[0] == 401
    assert _api(dv, "POST", "/servicex/transformation", "not-a-jwt", body)[0] == 401
    gateway_token = dv.ctx().request_token(user="ann", kind="gateway")  # another audience
    assert _api(dv, "POST", "/servicex/transformation", gateway_token, body)[0] == 401

    status, answer = _api(dv, "POST", "/servicex/transformation", ann_token, body)
    assert status == 200, answer
    request_id = answer["request_id"]
    for method, path in (("GET", ""), ("GET", "/results"), ("GET", "/cancel"), ("DELETE", "")):
        status, answer = _api(dv, method, f"/servicex/transformation/{request_id}{path}",
                              anna_token)  # fmt: skip
        assert status == 404, (method, path, answer)
    assert _api(dv, "GET", "/servicex/transformation", anna_token)[1]["requests"] == [] or all(
        r["request_id"] != request_id
        for r in _api(dv, "GET", "/servicex/transformation", anna_token)[1]["requests"]
    )

    def refusal(**changes) -> str:
        status, answer = _api(dv, "POST", "/servicex/transformation", ann_token,
                              {**body, **changes})  # fmt: skip
        assert status == 400, answer
        return answer["message"]

    bad_cut = json.dumps([{**QUERY[0], "cut": "MET_pt >"}])
    assert "does not parse" in refusal(selection=bad_cut)
    assert "has no tree 'Nope'" in refusal(selection=json.dumps([{"treename": "Nope"}]))
    assert "Rucio" in refusal(did="rucio://user.someone:data")
    assert "no dataset named 'nosuch'" in refusal(did="casa://nosuch")
    # ann's private dataset is not anna's to see, not even by name.
    status, listed = _api(dv, "GET", "/servicex/datasets", anna_token)
    names = {d["name"] for d in listed["datasets"]}
    assert "casa://sim" in names and "casa://mine" not in names, names
    status, answer = _api(dv, "POST", "/servicex/transformation", anna_token,
                          {**body, "did": "casa://mine"})  # fmt: skip
    assert (
        status == 400
        and "no dataset named 'mine' among those you may read" in answer["message"]
        and "ann~" not in answer["message"]
    ), answer
    # The client shows the sentence as it is.
    with pytest.raises(ValueError, match="has no tree 'Nope'"):
        _deliver(ann, dataset.GenericDataSet("casa", "sim"), query=[{"treename": "Nope"}],
                 return_exceptions=False)  # fmt: skip


def test_each_transforms_key_reads_its_own_bucket_only(dv, tmp_path):
    import boto3
    from botocore.exceptions import ClientError

    ann_token = dv.ctx().request_token(user="ann")
    anna_token = dv.ctx().request_token(user="anna")
    body = {"did": "casa://sim", "selection": json.dumps(QUERY), "codegen": "uproot-raw",
            "result-format": "root-file"}  # fmt: skip
    ids = [_api(dv, "POST", "/servicex/transformation", t, body)[1]["request_id"]
           for t in (ann_token, anna_token)]  # fmt: skip
    ann_status = _api(dv, "GET", f"/servicex/transformation/{ids[0]}", ann_token)[1]
    s3 = boto3.client(
        "s3", endpoint_url=f"http://{ann_status['minio-endpoint']}", region_name="us-east-1",
        aws_access_key_id=ann_status["minio-access-key"],
        aws_secret_access_key=ann_status["minio-secret-key"],
    )  # fmt: skip
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == [ids[0]]
    for attempt in (lambda: s3.list_objects_v2(Bucket=ids[1]),
                    lambda: s3.get_object(Bucket=ids[1], Key="x"),
                    lambda: s3.put_object(Bucket=ids[0], Key="x", Body=b"1")):  # fmt: skip
        with pytest.raises(ClientError):
            attempt()
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://{ann_status['minio-endpoint']}/{ids[0]}/", timeout=5)
    assert refused.value.code == 403


def _completed(dv, token: str, body: dict) -> str:
    """A transform asked for through the API and waited for; its request id."""
    import time

    request_id = _api(dv, "POST", "/servicex/transformation", token, body)[1]["request_id"]
    deadline = time.monotonic() + 120
    while (status := _api(dv, "GET", f"/servicex/transformation/{request_id}",
                          token)[1])["status"] not in ("Complete", "Fatal"):  # fmt: skip
        assert time.monotonic() < deadline, status
        time.sleep(0.3)
    assert status["status"] == "Complete", status
    return request_id


def test_file_urls_download_over_plain_http_for_their_owner_until_they_expire(dv, tmp_path):
    import time

    from casa.services.delivery.downloads import UrlSigner

    ann_token = dv.ctx().request_token(user="ann")
    anna_token = dv.ctx().request_token(user="anna")
    info = _api(dv, "GET", "/servicex", None)[1]
    assert "generate_file_urls" in info["capabilities"]
    body = {"file-list": dv.sim_urls, "selection": json.dumps(QUERY), "codegen": "uproot-raw",
            "result-format": "root-file"}  # fmt: skip
    request_id = _completed(dv, ann_token, body)
    names = [
        r["s3-object-name"]
        for r in _api(dv, "GET", f"/servicex/transformation/{request_id}/results", ann_token)[1][
            "results"
        ]
    ]

    # The owner gets a URL per result; a plain GET, with no token, fetches the skim.
    code, answer = _api(dv, "POST", "/servicex/transformation/file-urls", ann_token,
                        {"request_id": request_id, "file_list": names})  # fmt: skip
    assert code == 200 and sorted(answer["uris"]) == sorted(names), answer
    got = []
    for name in names:
        url, headers, expiry = answer["uris"][name]
        assert headers == {} and url.startswith(f"http://127.0.0.1:{dv.ports['delivery']}/")
        assert datetime_of(expiry) > time.time() + 3000
        (tmp_path / name).write_bytes(urllib.request.urlopen(url, timeout=30).read())
        got.append(uproot.open(tmp_path / name)["Events"].arrays())
    want = _expected(dv.local_files)
    assert np.array_equal(ak.to_numpy(ak.concatenate(got).MET_pt), ak.to_numpy(want.MET_pt))

    # Another user is told there is no such transform; a changed, borrowed or expired URL
    # opens nothing.
    code, _ = _api(dv, "POST", "/servicex/transformation/file-urls", anna_token,
                   {"request_id": request_id, "file_list": names})  # fmt: skip
    assert code == 404
    code, answer404 = _api(dv, "POST", "/servicex/transformation/file-urls", ann_token,
                           {"request_id": request_id, "file_list": ["../../keys"]})  # fmt: skip
    assert code == 404 and "has no result named ../../keys" in answer404["message"]
    url = answer["uris"][names[0]][0]
    signer = UrlSigner(dv.ctx().service_dir("delivery") / "url.key", "http://x")
    expired, _ = signer.url(request_id, names[0], now=time.time() - 7200)
    refusals = [
        ("bad signature", url[:-4] + ("0000" if not url.endswith("0000") else "1111")),
        ("bad signature", url.replace(names[0], names[1])),  # another object, same proof
        ("has expired", f"http://127.0.0.1:{dv.ports['delivery']}" + expired[len("http://x") :]),
    ]
    for reason, bad in refusals:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(bad, timeout=30)
        assert refused.value.code == 403
        assert reason in json.loads(refused.value.read())["message"]

    # Deleted, the transform's URLs open nothing either.
    assert _api(dv, "DELETE", f"/servicex/transformation/{request_id}", ann_token)[0] == 200
    with pytest.raises(urllib.error.HTTPError) as gone:
        urllib.request.urlopen(url, timeout=30)
    assert gone.value.code == 404


def datetime_of(text: str) -> float:
    import datetime

    return datetime.datetime.fromisoformat(text).timestamp()


def test_cancel_and_delete_through_the_client_and_the_skims_become_a_dataset(dv, tmp_path):
    from servicex import dataset
    from servicex.servicex_client import ServiceXClient

    ann = _as_user(dv, "ann", tmp_path)
    ann_token = (ann / "token").read_text()
    body = {"did": "casa://sim", "selection": json.dumps(QUERY), "codegen": "uproot-raw",
            "result-format": "root-file"}  # fmt: skip
    supervisor = dv.supervisor()
    cache = supervisor.running_pid(next(s for s in supervisor.services if s.name == "cache"))
    os.environ["BEARER_TOKEN_FILE"] = str(ann / "token")
    try:
        client = ServiceXClient(backend="casa", config_path=str(ann / "servicex.yaml"))
        body = {**body, "selection": json.dumps([{**QUERY[0], "cut": "MET_pt > 33"}])}
        request_id = _api(dv, "POST", "/servicex/transformation", ann_token, body)[1]["request_id"]
        os.kill(cache, signal.SIGSTOP)  # the transform cannot finish before it is canceled
        try:
            client.cancel_transform(request_id)
            status = _api(dv, "GET", f"/servicex/transformation/{request_id}", ann_token)[1]
        finally:
            os.kill(cache, signal.SIGCONT)
        assert status["status"] == "Canceled", status
        with pytest.raises(RuntimeError, match="is Canceled already"):
            client.cancel_transform(request_id)
        client.delete_transform(request_id)
        assert _api(dv, "GET", f"/servicex/transformation/{request_id}", ann_token)[0] == 404
        assert request_id not in {t.request_id for t in client.get_transforms()}
    finally:
        os.environ.pop("BEARER_TOKEN_FILE", None)

    # A NanoAOD skim (event IDs and muons of the events with two muons), as a dataset.
    nano = [{"treename": "Events", "filter_name": ["run", "luminosityBlock", "event", "nMuon",
                                                   "Muon_*", "MET_pt"],
             "cut": QUERY[0]["cut"]}]  # fmt: skip
    skims = _deliver(ann, dataset.GenericDataSet("casa", "sim"), query=nano)
    request_id = _request_id(skims[0])
    dv.casa("datasets", "add", "sim-skim", "--from-delivery", request_id, check=True)
    shown = json.loads(dv.casa("datasets", "show", "sim-skim", "--json", check=True).stdout)
    assert shown["events"] == len(_expected(dv.local_files))
    assert all("/store/user/ann~/" in f["url"] for f in shown["files"])  # her area: her data
    out = tmp_path / "run"
    dv.casa("run", "dimuon", "--dataset", "sim-skim", "--out", out, "--no-plots",
            env={"BEARER_TOKEN": dv.ctx().request_token(user="ann")}, check=True)  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["events"] == shown["events"]
    refused = dv.casa("datasets", "add", "again", "--from-delivery", "no-such-id")
    assert refused.returncode != 0 and "no delivery transform 'no-such-id'" in refused.stderr


def _ann_cluster_client(dv, timeout: float = 120):
    """A client of ann's cluster, once the delivery service has made or found it."""
    import time

    from casa.compute.gateway import gateway_client

    ctx = dv.ctx()
    gateway = gateway_client(ctx, token=ctx.request_token(user="ann", kind="gateway"))
    deadline = time.monotonic() + timeout
    while not (found := gateway.list_clusters()):
        assert time.monotonic() < deadline, "ann has no cluster"
        time.sleep(0.2)
    cluster = gateway.connect(found[0].name)
    return cluster, cluster.get_client(set_as_default=False)


def _twelve_files_request(dv, tmp_path_factory, name, events, seed, muon_pt):
    """Dataset ``name``: 12 generated files stored in the facility; their folder, ann's token
    and the body of a request for every branch of the events with a muon above ``muon_pt``."""
    data = tmp_path_factory.mktemp(name)
    generate_dataset(data, events, 12, seed=seed, workers=1)
    dv.casa("datasets", "add", name, data, "--store", check=True)
    query = [{"treename": "Events", "filter_name": "*",
              "cut": f"count_nonzero(Muon_pt > {muon_pt}, axis=1) >= 1"}]  # fmt: skip
    body = {"did": f"casa://{name}", "selection": json.dumps(query), "codegen": "uproot-raw",
            "result-format": "root-file"}  # fmt: skip
    return data, dv.ctx().request_token(user="ann"), body


def test_a_worker_killed_mid_transform_and_every_file_still_yields_one_result(dv, tmp_path_factory):
    import threading
    import time

    data, ann_token, body = _twelve_files_request(dv, tmp_path_factory, "many", 240_000, 23, 5)
    killed: list[int] = []
    connected = []

    def kill_a_busy_worker():
        cluster, client = _ann_cluster_client(dv)
        connected.extend([cluster, client])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            for address, keys in client.processing().items():
                if any(str(k).startswith("skim-") for k in keys):
                    pid = client.run(os.getpid, workers=[address])[address]
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
            time.sleep(0.005)

    killer = threading.Thread(target=kill_a_busy_worker)
    killer.start()
    request_id = _api(dv, "POST", "/servicex/transformation", ann_token, body)[1]["request_id"]
    killer.join()
    assert killed, "the test found no worker busy with a file"
    deadline = time.monotonic() + 180
    while (status := _api(dv, "GET", f"/servicex/transformation/{request_id}",
                          ann_token)[1])["status"] not in ("Complete", "Fatal"):  # fmt: skip
        assert time.monotonic() < deadline, status
        time.sleep(0.5)
    assert (status["status"], status["files-completed"], status["files-failed"]) == (
        "Complete",
        12,
        0,
    ), status
    record = _api(dv, "GET", f"/casa/transformation/{request_id}", ann_token)[1]
    objects = [f["object"] for f in record["files"]]
    assert len(set(objects)) == 12 and record["transformed"] == 12
    results = _api(dv, "GET", f"/servicex/transformation/{request_id}/results", ann_token)[1]
    assert sorted(r["s3-object-name"] for r in results["results"]) == sorted(objects)
    cluster, client = connected
    client.close()
    cluster.close(shutdown=False)


def test_a_transform_the_service_died_in_resumes_when_it_is_up_again(dv, tmp_path_factory):
    """The delivery service killed mid-transform, then 'casa up': the transform goes on,
    files done before are not transformed again, and every file yields one result."""
    import time

    data, ann_token, body = _twelve_files_request(dv, tmp_path_factory, "resumed", 360_000, 29, 7)
    supervisor = dv.supervisor()
    by_name = {s.name: s for s in supervisor.services}
    cache_pid = supervisor.running_pid(by_name["cache"])
    delivery_pid = supervisor.running_pid(by_name["delivery"])
    request_id = _api(dv, "POST", "/servicex/transformation", ann_token, body)[1]["request_id"]
    path = f"/servicex/transformation/{request_id}"
    deadline = time.monotonic() + 120
    while _api(dv, "GET", path, ann_token)[1]["files-completed"] < 1:
        assert time.monotonic() < deadline, "no file finished"
        time.sleep(0.05)
    os.kill(cache_pid, signal.SIGSTOP)  # the other files' reads wait: the transform is mid-way
    try:
        before = {r["s3-object-name"]: r["created_at"]
                  for r in _api(dv, "GET", f"{path}/results", ann_token)[1]["results"]}  # fmt: skip
        assert 1 <= len(before) < 12, before
        os.kill(delivery_pid, signal.SIGKILL)
    finally:
        os.kill(cache_pid, signal.SIGCONT)
    supervisor.up()
    assert supervisor.running_pid(by_name["delivery"]) not in (None, delivery_pid)
    deadline = time.monotonic() + 180
    while (status := _api(dv, "GET", path, ann_token)[1])["status"] not in ("Complete", "Fatal"):
        assert time.monotonic() < deadline, status
        time.sleep(0.3)
    assert status["status"] == "Complete" and status["files-completed"] == 12, status
    after = {r["s3-object-name"]: r["created_at"]
             for r in _api(dv, "GET", f"{path}/results", ann_token)[1]["results"]}  # fmt: skip
    assert len(after) == 12 and all(after[name] == when for name, when in before.items())
    record = _api(dv, "GET", f"/casa/transformation/{request_id}", ann_token)[1]
    # (a result the killed service had cached but not yet recorded comes from the cache)
    assert record["transformed"] + record["from_cache"] == 12, record
    bucket = dv.ctx().service_dir("s3") / "buckets" / request_id / request_id
    assert sorted(p.name for p in bucket.iterdir()) == sorted(after)
    got = sum(uproot.open(bucket / name)["Events"].num_entries for name in after)
    want = 0
    for f in sorted(data.glob("*.root")):
        muons = uproot.open(f)["Events"]["Muon_pt"].array()
        want += int(ak.sum(ak.count_nonzero(muons > 7, axis=1) >= 1))
    assert got == want


def test_a_transform_without_progress_is_failed_as_stalled(dv):
    import time

    ann_token = dv.ctx().request_token(user="ann")
    query = [{**QUERY[0], "cut": "count_nonzero(Muon_pt > 21, axis=1) >= 2"}]  # not cached
    body = {"did": "casa://sim", "selection": json.dumps(query), "codegen": "uproot-raw",
            "result-format": "root-file"}  # fmt: skip
    supervisor = dv.supervisor()
    cache = next(s for s in supervisor.services if s.name == "cache")
    pid = supervisor.running_pid(cache)
    request_id = _api(dv, "POST", "/servicex/transformation", ann_token, body)[1]["request_id"]
    os.kill(pid, signal.SIGSTOP)  # every read of the transform now waits
    try:
        deadline = time.monotonic() + 90
        while (status := _api(dv, "GET", f"/servicex/transformation/{request_id}",
                              ann_token)[1])["status"] not in ("Complete", "Fatal"):  # fmt: skip
            assert time.monotonic() < deadline, status
            time.sleep(0.5)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert status["status"] == "Fatal", status
    assert "failed as stalled" in status["error"] and "delivery.stall_timeout" in status["error"]


def test_a_changed_input_file_is_transformed_again_and_its_old_result_dropped(dv, tmp_path):
    import time

    ann_token = dv.ctx().request_token(user="ann")
    path = tmp_path / "changing.root"
    shutil.copyfile(dv.local_files[0], path)
    body = {"file-list": [str(path)], "selection": json.dumps(QUERY), "codegen": "uproot-raw",
            "result-format": "root-file"}  # fmt: skip

    def transform() -> dict:
        request_id = _api(dv, "POST", "/servicex/transformation", ann_token, body)[1]["request_id"]
        deadline = time.monotonic() + 120
        while _api(dv, "GET", f"/servicex/transformation/{request_id}",
                   ann_token)[1]["status"] != "Complete":  # fmt: skip
            assert time.monotonic() < deadline
            time.sleep(0.2)
        return _api(dv, "GET", f"/casa/transformation/{request_id}", ann_token)[1]

    first = transform()
    assert (first["transformed"], first["from_cache"]) == (1, 0)
    again = transform()
    assert (again["transformed"], again["from_cache"]) == (0, 1)
    shutil.copyfile(dv.local_files[1], path)  # another file's events, another size
    changed = transform()
    assert (changed["transformed"], changed["from_cache"]) == (1, 0)
    assert changed["files"][0]["events"] == len(_expected([dv.local_files[1]]))


def test_the_cache_keeps_within_its_bound_least_recently_used_first(tmp_path):
    """The shared cache's bookkeeping on its own (its SQLite records and files)."""
    from casa.services.delivery.cache import ResultCache, result_key
    from casa.services.delivery.records import DeliveryRecords

    cache = ResultCache(tmp_path / "cache", DeliveryRecords(tmp_path / "d.sqlite"), limit=250)
    keys = [result_key("uproot-raw", QUERY, "root-file", f"root://h//f{i}.root", "10:1")
            for i in range(3)]  # fmt: skip
    assert len(set(keys)) == 3 and keys[0] == result_key(
        "uproot-raw", json.loads(json.dumps(QUERY)), "root-file", "root://h//f0.root", "10:1"
    )
    cache.store(keys[0], "root-file", b"a" * 100, "root://h//f0.root", "10:1", 5)
    cache.store(keys[1], "root-file", b"b" * 100, "root://h//f1.root", "10:1", 5)
    assert cache.lookup(keys[0], "root-file") is not None  # f0 used: f1 is now the oldest
    cache.store(keys[2], "root-file", b"c" * 100, "root://h//f2.root", "10:1", 5)
    assert cache.lookup(keys[1], "root-file") is None
    assert cache.lookup(keys[0], "root-file") and cache.lookup(keys[2], "root-file")
    assert cache.size() == 200 and not cache.path(keys[1], "root-file").exists()
    # A new identity of f0 (the file changed): its old result goes.
    renewed = result_key("uproot-raw", QUERY, "root-file", "root://h//f0.root", "11:2")
    cache.store(renewed, "root-file", b"d" * 10, "root://h//f0.root", "11:2", 1)
    assert cache.lookup(keys[0], "root-file") is None
    assert cache.lookup(renewed, "root-file")[1].events == 1
