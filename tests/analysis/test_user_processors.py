"""Users' own processors as the field writes them: classes with arguments, factories,
callable processors, flat trees read with BaseSchema and schemas of their own.

Every result is checked against the same selection computed from the raw branches with
uproot and numpy alone.
"""

from __future__ import annotations

import pickle
import subprocess
import sys

import coffea.nanoevents
import numpy as np
import pytest
import uproot

from casa.analysis.registry import load_processor, parse_processor_args
from casa.analysis.runner import run_analysis
from casa.analysis.schemas import resolve_schema, schema_names
from casa.compute.local import IterativeBackend
from casa.data.files import inspect_root_file
from casa.errors import AnalysisError, UsageError

TREE = "ntuple"

#: A user's analysis file, in the styles coffea users write them.
USER_CODE = '''
import awkward as ak
import hist
import numpy as np
from coffea import processor
from coffea.nanoevents import BaseSchema
from coffea.nanoevents.schemas.base import zip_forms


class LeptonCut(processor.ProcessorABC):
    """Leptons above a pT cut, weighted by the event weight, under a histogram named label."""

    def __init__(self, cut, label="selected", bins=20):
        self.cut = cut
        self.label = label
        self.bins = bins

    def process(self, events):
        keep = events.lep_pt > self.cut
        weighted = hist.Hist.new.Reg(self.bins, 0, 200, name="pt").Weight()
        weighted.fill(pt=events.lep_pt[keep], weight=events.weight[keep])
        counted = hist.Hist.new.Integer(0, 8, name="njet").Int64()
        counted.fill(njet=events.njet[keep])
        return {self.label: weighted, "njet": counted, "events": int(ak.sum(keep))}


def make_cut(cut=40.0, label="from_factory"):
    """A factory: the processor configured as a function call."""
    return LeptonCut(cut, label)


def central_leptons(events):
    """A callable processor: a function of the events returning an accumulatable."""
    central = abs(events.lep_eta) < 1.0
    return {"central": int(ak.sum(central)), "central_pt": float(ak.sum(events.lep_pt[central]))}


def needs_two(cut, label):
    return LeptonCut(cut, label)


def maybe_events(events=None):
    return 42


class NotAProcessor:
    pass


INSTANCE = LeptonCut(10.0, "instance")


class LeptonSchema(BaseSchema):
    """A schema of the user's own: lep_pt and lep_eta become one record field, Lepton."""

    def __init__(self, base_form, *args, **kwargs):
        super().__init__(base_form)
        fields, contents = self._form["fields"], self._form["contents"]
        lepton = {f[4:]: c for f, c in zip(fields, contents) if f.startswith("lep_")}
        rest = [(f, c) for f, c in zip(fields, contents) if not f.startswith("lep_")]
        self._form["fields"] = [f for f, _ in rest] + ["Lepton"]
        self._form["contents"] = [c for _, c in rest] + [zip_forms(lepton, "Lepton")]


class LeptonSchemaUser(processor.ProcessorABC):
    """Reads the record field only the user's schema makes."""

    def process(self, events):
        h = hist.Hist.new.Reg(20, 0, 200, name="pt").Double()
        h.fill(pt=events.Lepton.pt[events.Lepton.eta > 0])
        return {"forward_pt": h}
'''


@pytest.fixture(scope="module")
def flat_files(tmp_path_factory):
    """Two small flat ntuples (one lepton per event), as many users' own trees are."""
    d = tmp_path_factory.mktemp("flat")
    rng = np.random.default_rng(5)
    paths = []
    for i, n in enumerate((1500, 900)):
        path = d / f"flat_{i}.root"
        branches = {
            "lep_pt": rng.exponential(40.0, n),
            "lep_eta": rng.uniform(-2.5, 2.5, n),
            "weight": rng.uniform(0.2, 1.8, n),
            "njet": rng.integers(0, 7, n).astype(np.int32),
        }
        with uproot.recreate(path) as f:  # a TTree, as users' ntuples are (not an RNTuple)
            f.mktree(TREE, {k: v.dtype for k, v in branches.items()})
            f[TREE].extend(branches)
        assert uproot.open(path)[TREE].classname == "TTree"
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def infos(flat_files):
    return [inspect_root_file(p, TREE) for p in flat_files]


@pytest.fixture(scope="module")
def raw(flat_files):
    """The branches as plain numpy arrays, read by uproot alone."""
    arrays = [uproot.open(p)[TREE].arrays(library="np") for p in flat_files]
    return {k: np.concatenate([a[k] for a in arrays]) for k in arrays[0]}


@pytest.fixture(scope="module")
def user_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("user") / "my_flat_analysis.py"
    path.write_text(USER_CODE)
    return path


def _run(processor, infos, schema="BaseSchema"):
    return run_analysis(processor, "flat", infos, IterativeBackend(), chunksize=700, schema=schema)


def _expected_weighted(raw, cut, bins=20):
    keep = raw["lep_pt"] > cut
    edges = np.linspace(0, 200, bins + 1)
    pt, w = raw["lep_pt"][keep], raw["weight"][keep]
    inside = pt < 200  # np.histogram would put 200 itself into the last bin
    sum_w, _ = np.histogram(pt[inside], edges, weights=w[inside])
    sum_w2, _ = np.histogram(pt[inside], edges, weights=w[inside] ** 2)
    return sum_w, sum_w2, float(w[~inside].sum())


def test_a_class_with_arguments_on_a_flat_tree(user_file, infos, raw):
    args = parse_processor_args(["cut=25.5", 'label="tight"', "bins=20"])
    processor = load_processor(f"{user_file}:LeptonCut", args)
    assert (processor.cut, processor.label) == (25.5, "tight")
    out = _run(processor, infos).output
    sum_w, sum_w2, overflow = _expected_weighted(raw, 25.5)
    h = out["tight"]
    assert np.allclose(h.values(), sum_w) and np.allclose(h.variances(), sum_w2)
    assert np.isclose(h.view(flow=True).value[-1], overflow)
    keep = raw["lep_pt"] > 25.5
    assert out["events"] == int(keep.sum())
    assert np.array_equal(out["njet"].values(), np.bincount(raw["njet"][keep], minlength=8))


def test_a_factory_with_and_without_arguments(user_file, infos, raw):
    default = load_processor(f"{user_file}:make_cut")
    assert (default.cut, default.label) == (40.0, "from_factory")
    configured = load_processor(f"{user_file}:make_cut", {"cut": 60, "label": "tight"})
    out = _run(configured, infos).output
    sum_w, _, _ = _expected_weighted(raw, 60)
    assert np.allclose(out["tight"].values(), sum_w)


def test_a_callable_processor(user_file, infos, raw):
    processor = load_processor(f"{user_file}:central_leptons")
    assert callable(processor) and processor.__name__ == "central_leptons"
    out = _run(processor, infos).output
    central = np.abs(raw["lep_eta"]) < 1.0
    assert out["central"] == int(central.sum())
    assert np.isclose(out["central_pt"], raw["lep_pt"][central].sum())


def test_a_users_own_schema_from_a_file(user_file, infos, raw):
    schema = resolve_schema(f"{user_file}:LeptonSchema")
    assert schema.__name__ == "LeptonSchema"
    processor = load_processor(f"{user_file}:LeptonSchemaUser")
    out = _run(processor, infos, schema=schema).output
    pt = raw["lep_pt"][raw["lep_eta"] > 0]
    expected, _ = np.histogram(pt[pt < 200], np.linspace(0, 200, 21))
    assert np.array_equal(out["forward_pt"].values(), expected)
    with pytest.raises(AnalysisError, match="Lepton"):  # without it, there is no such field
        _run(processor, infos, schema="BaseSchema")


def test_a_users_schema_travels_to_processes_that_cannot_import_its_file(user_file):
    """As a process pool or a Dask scheduler and its workers pickle coffea's task."""
    schema = resolve_schema(f"{user_file}:LeptonSchema")
    again = pickle.loads(pickle.dumps(schema))  # a scheduler in this process, then a worker
    assert again is schema
    worker = (
        "import pickle, sys\n"
        "from coffea.nanoevents import BaseSchema\n"
        "cls = pickle.loads(sys.stdin.buffer.read())\n"
        "cls = pickle.loads(pickle.dumps(cls))  # passed on from there\n"
        "print(cls.__name__, issubclass(cls, BaseSchema), cls.__doc__.startswith('A schema of'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", worker], input=pickle.dumps(again), capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().split() == ["LeptonSchema", "True", "True"]


def test_schema_names_come_from_coffea():
    names = schema_names()
    shipped = {
        n
        for n, v in vars(coffea.nanoevents).items()
        if isinstance(v, type) and issubclass(v, coffea.nanoevents.BaseSchema)
    }
    assert set(names) == shipped
    assert {"NanoAODSchema", "BaseSchema", "PHYSLITESchema", "DelphesSchema"} <= set(names)
    for name in names:
        assert resolve_schema(name) is getattr(coffea.nanoevents, name)
    assert resolve_schema(None) is coffea.nanoevents.NanoAODSchema
    assert resolve_schema("coffea.nanoevents:TreeMakerSchema").__name__ == "TreeMakerSchema"


def test_schema_errors_name_the_choices(user_file):
    with pytest.raises(UsageError) as e:
        resolve_schema("NanoAOD")
    assert "unknown schema 'NanoAOD'" in str(e.value)
    assert all(name in str(e.value) for name in schema_names())
    with pytest.raises(UsageError, match="json.dumps is not a coffea schema"):
        resolve_schema("json:dumps")
    with pytest.raises(UsageError, match="has no schema class 'Nope'"):
        resolve_schema(f"{user_file}:Nope")
    with pytest.raises(UsageError, match="cannot be imported"):
        resolve_schema("no_such_module_here:Schema")
    with pytest.raises(UsageError, match="NotAProcessor is not a coffea schema"):
        resolve_schema(f"{user_file}:NotAProcessor")


def test_arg_values_are_json_when_they_parse_as_json():
    args = parse_processor_args(
        ["n=3", "x=2.5", "on=true", "none=null", "cuts=[1, 2]", "name=tight", 'quoted="7"', "e="]
    )
    assert args == {
        "n": 3, "x": 2.5, "on": True, "none": None, "cuts": [1, 2], "name": "tight",
        "quoted": "7", "e": "",
    }  # fmt: skip
    with pytest.raises(UsageError, match="--arg 'cut' has no '='"):
        parse_processor_args(["cut"])
    with pytest.raises(UsageError, match="'2x' is not a Python argument name"):
        parse_processor_args(["2x=1"])
    with pytest.raises(UsageError, match="--arg cut is given twice"):
        parse_processor_args(["cut=1", "cut=2"])


def test_bad_arguments_name_the_argument_and_what_is_taken(user_file):
    with pytest.raises(UsageError) as e:
        load_processor(f"{user_file}:LeptonCut", {"cut": 1, "lable": "x"})
    assert "--arg lable" in str(e.value) and "cut, label='selected', bins=20" in str(e.value)
    with pytest.raises(UsageError, match="LeptonCut in .* needs cut: add --arg cut=VALUE"):
        load_processor(f"{user_file}:LeptonCut")
    with pytest.raises(UsageError, match="needs cut, label"):
        load_processor(f"{user_file}:needs_two")
    with pytest.raises(UsageError, match="callable processor takes no --arg"):
        load_processor(f"{user_file}:central_leptons", {"cut": 1})
    with pytest.raises(UsageError, match="processor instance already"):
        load_processor(f"{user_file}:INSTANCE", {"cut": 1})
    assert load_processor(f"{user_file}:INSTANCE").label == "instance"
    with pytest.raises(UsageError, match="dimuon takes no argument 'cut'; it takes no arguments"):
        load_processor("dimuon", {"cut": 1})
    with pytest.raises(AnalysisError) as e:
        load_processor(f"{user_file}:maybe_events")
    assert "returned a value of type int, not a processor" in str(e.value)
    assert "casa took it for a factory; a callable processor must require its events" in str(
        e.value
    )
    with pytest.raises(AnalysisError, match="NotAProcessor in .* is not a coffea processor"):
        load_processor(f"{user_file}:NotAProcessor")
    with pytest.raises(AnalysisError, match="has no class or function 'Nope'.*LeptonCut"):
        load_processor(f"{user_file}:Nope")
