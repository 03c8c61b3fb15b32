"""The delivery service through the unmodified ServiceX client (servicex 3.3), on the real
gateway, cache and S3 store: results checked against uproot reading the same files."""

from __future__ import annotations

import json
import os
import shutil
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

    f = new_facility_home('[gateway]\nbackend = "local"\n[delivery]\nworkers = 2\n')
    f.supervisor().up()
    data = tmp_path_factory.mktemp("dv-data")
    generate_dataset(data, 8_000, 2, seed=17, workers=1)
    f.casa("datasets", "add", "sim", data, "--store", check=True)
    ctx = f.ctx()
    # A file only ann may read: her own area of the storage.
    (private,) = ctx.storage().store(
        "mine", [inspect_root_file(sorted(data.glob("*.root"))[0], "Events")], user="ann"
    )
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

    q = sx_query.UprootRaw(query)
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


def test_a_second_user_is_served_from_the_shared_cache_but_never_a_file_they_may_not_read(
    dv, tmp_path, caplog
):
    from servicex import dataset

    ann, anna = _as_user(dv, "ann", tmp_path), _as_user(dv, "anna", tmp_path)
    query = [{**QUERY[0], "cut": "count_nonzero(Muon_pt > 25, axis=1) >= 2"}]
    first = _deliver(ann, dataset.FileList(dv.sim_urls), query=query)
    second = _deliver(anna, dataset.FileList(dv.sim_urls), query=query)
    assert sorted(Path(p).read_bytes() for p in first) == sorted(
        Path(p).read_bytes() for p in second
    )
    anna_token = (anna / "token").read_text()
    status, record = _api(dv, "GET", f"/casa/transformation/{_request_id(second[0])}",
                          anna_token)  # fmt: skip
    assert status == 200, record
    assert (record["transformed"], record["from_cache"]) == (0, 2)  # nothing ran again

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
