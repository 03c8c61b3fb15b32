"""The built-in analyses written for ROOT's RDataFrame, as a ROOT user would write them.

Each query is a chain of ``Filter``/``Define`` nodes with C++ expressions, calling small
C++ helpers that are JIT-compiled once per process with ``ROOT.gInterpreter.Declare``, and
fills ``Histo1D`` histograms. The histograms are the casa processors' exactly (see
docs/analyses.md): the same selections, the same tie-breaking (the first candidate in
combination order wins, muons come before electrons), and kinematics in float64 with the
formulas of scikit-hep vector, which coffea's behaviours use (cartesian sums, a negative
stored mass counting as m² < 0, a spacelike sum getting a negative mass).

Two details exist only to reproduce casa's numbers bin for bin:

- **Bin edges.** casa fills ``hist`` (boost-histogram), which finds a value's bin as
  ``int((x - lo) / (hi - lo) * bins)``; ROOT's ``TAxis::FindBin`` computes
  ``int(bins * (x - lo) / (hi - lo))``. The two disagree for some values exactly on an edge:
  hist puts 58.0 into [56, 58) on a 0-200 GeV axis of 100 bins (58 / 200 * 100 is
  28.999999999999996 in double), ROOT into [58, 60). Stored momenta are rounded floats and
  hit edges often, so every query fills the bin centre of hist's bin (``casa_bench::hist_x``)
  instead of the raw value: the ``TH1D`` then holds exactly hist's counts.
- **Negative b-tag placeholders and NaN** land in underflow and overflow as in hist.

ROOT's implicit multi-threading can be set only once per process: ``ROOT.EnableImplicitMT``
fixes the size of ROOT's thread pool the first time it is called, and later calls cannot
change it. :func:`run_rdf` therefore refuses a thread count that differs from the one the
process already runs with; :func:`run_rdf_subprocess` runs each measurement in a fresh
``python -m casa.bench.rdf`` process, so its first query is cold (JIT included) and thread
settings never leak from one measurement into the next; the bench runs each query twice in
that process, the second time warm (helpers compiled, thread pool up).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from casa import errors
from casa.errors import AnalysisError, DataError, UsageError

#: Histogram name -> (bins, low edge, high edge) of each query: the casa processors' binning.
HISTOGRAMS: dict[str, dict[str, tuple[int, float, float]]] = {
    "dimuon": {"mass": (200, 0.0, 200.0)},
    "adl1": {"met": (100, 0.0, 200.0)},
    "adl2": {"jet_pt": (100, 0.0, 200.0)},
    "adl3": {"jet_pt": (100, 0.0, 200.0)},
    "adl4": {"met": (100, 0.0, 200.0)},
    "adl5": {"met": (100, 0.0, 200.0)},
    "adl6": {"trijet_pt": (100, 0.0, 200.0), "trijet_btag": (100, 0.0, 1.0)},
    "adl7": {"sum_pt": (100, 0.0, 200.0)},
    "adl8": {"mt": (100, 0.0, 200.0)},
}

#: The queries RDataFrame runs: the built-in analyses.
QUERIES: tuple[str, ...] = tuple(HISTOGRAMS)

#: Jet b-tag branches tried in order, as casa's ``objects.btag_field`` does.
BTAG_BRANCHES: tuple[str, ...] = ("Jet_btag", "Jet_btagDeepFlavB", "Jet_btagDeepB")

#: Missing-ET collections tried in order, as casa's ``objects.missing_et`` does.
MET_COLLECTIONS: tuple[str, ...] = ("MET", "PFMET")

#: Compiler flags for cling's JIT in the child process (helps RDataFrame's speed).
EXTRA_CLING_ARGS = "-O2"

INSTALL_HINT = (
    "ROOT is not installed: pip install 'casa[bench]' (ROOT's Python wheel, the package "
    "'root' on PyPI, about 250 MB)"
)

_LOOPBACK_ROOT_URL = re.compile(
    r"^(?P<scheme>roots?|xroots?)://(?P<user>[^/@]*@)?(?P<host>127\.0\.0\.1|localhost)"
    r"(?P<rest>(:\d+)?(/.*)?)$",
    re.IGNORECASE,
)

# Written as a ROOT user writes helpers for RDataFrame: plain functions on RVecs.
_HELPERS = r"""
#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <vector>
#include <ROOT/RVec.hxx>
#include <ROOT/RLogger.hxx>
#include <ROOT/RDF/Utils.hxx>

namespace casa_bench {

using ROOT::RVec;

// Cartesian components of a (pt, eta, phi, mass) vector, computed in double exactly as
// scikit-hep vector (coffea's behaviours) does; a negative mass counts as m^2 < 0.
struct P4 {
   double x, y, z, t;
};

inline P4 make_p4(double pt, double eta, double phi, double mass)
{
   const double expmeta = std::exp(-eta);
   const double invsintheta = 0.5 * (1 + expmeta * expmeta) / expmeta;
   const double t2 = std::copysign(mass * mass, mass) + (pt * pt) * (invsintheta * invsintheta);
   return {pt * std::cos(phi), pt * std::sin(phi), pt * std::sinh(eta),
           std::sqrt(std::max(t2, 0.0))};
}

inline P4 operator+(const P4 &a, const P4 &b)
{
   return {a.x + b.x, a.y + b.y, a.z + b.z, a.t + b.t};
}

// Invariant mass; a spacelike vector gets sign(m^2) sqrt(|m^2|).
inline double mass(const P4 &p)
{
   const double m2 = p.t * p.t - (p.x * p.x + p.y * p.y + p.z * p.z);
   return std::copysign(std::sqrt(std::abs(m2)), m2);
}

inline double pt(const P4 &p)
{
   return std::sqrt(p.x * p.x + p.y * p.y);
}

// phi1 - phi2 folded into [-pi, pi) like numpy's (dphi + pi) % (2 pi) - pi.
inline double delta_phi(double phi1, double phi2)
{
   const double two_pi = 2 * M_PI;
   double r = std::fmod((phi1 - phi2) + M_PI, two_pi);
   if (r < 0)
      r += two_pi;
   return r - M_PI;
}

inline double delta_r(double eta1, double phi1, double eta2, double phi2)
{
   const double dphi = delta_phi(phi1, phi2);
   const double deta = eta1 - eta2;
   return std::sqrt(dphi * dphi + deta * deta);
}

// A value that TH1D bins where hist (boost-histogram) bins x: the centre of hist's bin.
inline double hist_x(double x, int bins, double lo, double hi)
{
   const double z = (x - lo) / (hi - lo);
   if (z < 1) {
      if (z >= 0) {
         const int i = static_cast<int>(z * bins);
         return lo + (i + 0.5) * ((hi - lo) / bins);
      }
      return lo - (hi - lo); // underflow
   }
   return hi + (hi - lo); // overflow, NaN included
}

template <typename T>
RVec<double> hist_x(const RVec<T> &values, int bins, double lo, double hi)
{
   RVec<double> out(values.size());
   for (std::size_t i = 0; i < values.size(); ++i)
      out[i] = hist_x(static_cast<double>(values[i]), bins, lo, hi);
   return out;
}

template <typename F>
P4 p4_at(const RVec<F> &pt, const RVec<F> &eta, const RVec<F> &phi, const RVec<F> &mass,
         std::size_t i)
{
   return make_p4(pt[i], eta[i], phi[i], mass[i]);
}

// dimuon: the mass of the first two muons (the event has exactly two).
template <typename F>
double dimuon_mass(const RVec<F> &pt, const RVec<F> &eta, const RVec<F> &phi, const RVec<F> &m)
{
   return mass(p4_at(pt, eta, phi, m, 0) + p4_at(pt, eta, phi, m, 1));
}

// adl5: any two muons of opposite charge with 60 < m < 120 GeV.
template <typename F, typename C>
bool has_z_like_pair(const RVec<F> &pt, const RVec<F> &eta, const RVec<F> &phi,
                     const RVec<F> &m, const RVec<C> &charge)
{
   const std::size_t n = pt.size();
   for (std::size_t i = 0; i < n; ++i)
      for (std::size_t j = i + 1; j < n; ++j) {
         if (!(charge[i] * charge[j] < 0))
            continue;
         const double pair_mass = mass(p4_at(pt, eta, phi, m, i) + p4_at(pt, eta, phi, m, j));
         if (pair_mass > 60 && pair_mass < 120)
            return true;
      }
   return false;
}

// adl6: indices of the trijet with mass closest to 172.5 GeV, the first in i < j < k order
// on a tie.
template <typename F>
RVec<int> best_trijet(const RVec<F> &pt, const RVec<F> &eta, const RVec<F> &phi,
                      const RVec<F> &m)
{
   const std::size_t n = pt.size();
   std::vector<P4> p(n);
   for (std::size_t i = 0; i < n; ++i)
      p[i] = p4_at(pt, eta, phi, m, i);
   double best = std::numeric_limits<double>::infinity();
   RVec<int> chosen{0, 1, 2};
   for (std::size_t i = 0; i < n; ++i)
      for (std::size_t j = i + 1; j < n; ++j)
         for (std::size_t k = j + 1; k < n; ++k) {
            const double distance = std::abs(mass(p[i] + p[j] + p[k]) - 172.5);
            if (distance < best) {
               best = distance;
               chosen = {int(i), int(j), int(k)};
            }
         }
   return chosen;
}

template <typename F>
double trijet_pt(const RVec<F> &pt, const RVec<F> &eta, const RVec<F> &phi, const RVec<F> &m,
                 const RVec<int> &jets)
{
   return casa_bench::pt(p4_at(pt, eta, phi, m, jets[0]) + p4_at(pt, eta, phi, m, jets[1]) +
                         p4_at(pt, eta, phi, m, jets[2]));
}

// adl7: scalar pT sum of jets above 30 GeV with dR >= 0.4 to every lepton above 10 GeV.
template <typename F, typename L>
double isolated_jet_sum_pt(const RVec<F> &jet_pt, const RVec<F> &jet_eta,
                           const RVec<F> &jet_phi, const RVec<L> &lep_pt,
                           const RVec<L> &lep_eta, const RVec<L> &lep_phi)
{
   double sum = 0;
   for (std::size_t j = 0; j < jet_pt.size(); ++j) {
      if (!(jet_pt[j] > 30))
         continue;
      bool isolated = true;
      for (std::size_t l = 0; l < lep_pt.size() && isolated; ++l)
         if (lep_pt[l] > 10 && !(delta_r(jet_eta[j], jet_phi[j], lep_eta[l], lep_phi[l]) >= 0.4))
            isolated = false;
      if (isolated)
         sum += static_cast<double>(jet_pt[j]);
   }
   return sum;
}

// adl8: the same-flavour opposite-charge pair with mass closest to 91.2 GeV (first on a
// tie), as {i, j}; empty without such a pair.
template <typename F, typename C, typename G>
RVec<int> best_sfos_pair(const RVec<F> &pt, const RVec<F> &eta, const RVec<F> &phi,
                         const RVec<F> &m, const RVec<C> &charge, const RVec<G> &flavour)
{
   const std::size_t n = pt.size();
   double best = std::numeric_limits<double>::infinity();
   RVec<int> chosen;
   for (std::size_t i = 0; i < n; ++i)
      for (std::size_t j = i + 1; j < n; ++j) {
         if (!(flavour[i] == flavour[j] && charge[i] * charge[j] < 0))
            continue;
         const double distance =
            std::abs(mass(p4_at(pt, eta, phi, m, i) + p4_at(pt, eta, phi, m, j)) - 91.2);
         if (chosen.empty() || distance < best) {
            best = distance;
            chosen = {int(i), int(j)};
         }
      }
   return chosen;
}

// adl8: mT of MET and the highest-pT lepton outside the pair (the first on a tie).
template <typename F, typename M>
double third_lepton_mt(const RVec<F> &pt, const RVec<F> &phi, const RVec<int> &pair,
                       M met_pt, M met_phi)
{
   int third = -1;
   for (int l = 0; l < int(pt.size()); ++l) {
      if (l == pair[0] || l == pair[1])
         continue;
      if (third < 0 || pt[l] > pt[third])
         third = l;
   }
   const double lep_pt = pt[third];
   const double dphi = delta_phi(static_cast<double>(met_phi), static_cast<double>(phi[third]));
   return std::sqrt(2 * lep_pt * static_cast<double>(met_pt) * (1 - std::cos(dphi)));
}

// RDataFrame's own log (JIT and event-loop timings), recorded instead of printed.
class LogRecorder : public ROOT::RLogHandler {
public:
   std::vector<std::string> *fMessages;
   explicit LogRecorder(std::vector<std::string> *messages) : fMessages(messages) {}
   bool Emit(const ROOT::RLogEntry &entry) override
   {
      if (entry.fChannel == &ROOT::Detail::RDF::RDFLogChannel()) {
         fMessages->push_back(entry.fMessage);
         return false;
      }
      return true;
   }
};

std::vector<std::string> rdf_log;
std::unique_ptr<ROOT::RLogScopedVerbosity> rdf_log_verbosity;

void record_rdf_log()
{
   if (rdf_log_verbosity)
      return;
   ROOT::RLogManager::Get().PushFront(std::make_unique<LogRecorder>(&rdf_log));
   rdf_log_verbosity = std::make_unique<ROOT::RLogScopedVerbosity>(
      ROOT::Detail::RDF::RDFLogChannel(), ROOT::ELogLevel::kInfo);
}

} // namespace casa_bench
"""

_LOOP_MESSAGE = re.compile(r"Finished event loop number \d+ \(.*?s CPU, ([0-9.eE+-]+)s elapsed\)")


@dataclass
class RDFResult:
    """One RDataFrame run of a query: its histograms and what it cost."""

    #: Histogram name -> counts, under- and overflow included (hist's ``values(flow=True)``).
    histograms: dict[str, np.ndarray]
    #: Events in the input files (every event is looked at once).
    events: int
    #: Loading RDataFrame, compiling casa's helpers, building the graph, RDataFrame's JIT and
    #: the event loop; not Python's start-up.
    wall_seconds: float
    #: ``wall_seconds`` less the event loop: loading, compiling and JIT-ing (0 if unknown).
    jit_seconds: float
    query: str = ""
    threads: int = 1
    #: The event loop alone, as RDataFrame's log reports it.
    loop_seconds: float = 0.0
    files: list[str] = field(default_factory=list)

    @property
    def events_per_second(self) -> float:
        """Throughput over the whole wall time."""
        return self.events / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dictionary (counts as lists)."""
        out = {k: v for k, v in self.__dict__.items() if k != "histograms"}
        out["histograms"] = {k: v.tolist() for k, v in self.histograms.items()}
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RDFResult:
        """The result that :meth:`to_json` wrote."""
        data = dict(data)
        data["histograms"] = {k: np.asarray(v, dtype=float) for k, v in data["histograms"].items()}
        return cls(**data)


def _import_root() -> Any:
    """``import ROOT`` (quietly), or a UsageError saying how to install it."""
    # Only effective before ROOT is imported: cling reads it when it starts.
    os.environ.setdefault("EXTRA_CLING_ARGS", EXTRA_CLING_ARGS)
    try:
        with warnings.catch_warnings():
            # The PyPI wheel warns on import that it is an "alpha" distribution.
            warnings.simplefilter("ignore")
            import ROOT
    except ImportError as e:
        raise UsageError(INSTALL_HINT) from e
    return ROOT


def rdf_available() -> bool:
    """Whether ROOT's Python package is installed (found without importing it).

    Importing ROOT starts its C++ interpreter and installs ROOT's signal handlers in the
    calling process, so this only looks for the package; an installation that is present
    but broken fails in :func:`run_rdf` (in the child, for :func:`run_rdf_subprocess`).
    """
    import importlib.util

    if "ROOT" in sys.modules:
        return sys.modules["ROOT"] is not None
    try:
        return importlib.util.find_spec("ROOT") is not None
    except (ImportError, ValueError):
        return False


def rdf_url(url: str) -> str:
    """``url`` with a loopback ``root://`` host (127.0.0.1 or localhost) moved to 127.0.0.2.

    RDataFrame and TChain treat ``root://127.0.0.1:PORT//path`` and ``root://localhost:...``
    as local files and fail to open them; any other loopback address, such as 127.0.0.2,
    reaches the same XRootD server (it listens on all addresses) and works.
    """
    m = _LOOPBACK_ROOT_URL.match(url)
    if m is None:
        return url
    return f"{m['scheme']}://{m['user'] or ''}127.0.0.2{m['rest']}"


def _declare_helpers(ROOT: Any) -> None:
    if not hasattr(ROOT, "casa_bench"):
        # The log helpers use symbols of libROOTDataFrame, which ROOT loads only on first use.
        ROOT.gSystem.Load("libROOTDataFrame")
        if not ROOT.gInterpreter.Declare(_HELPERS):
            raise AnalysisError("ROOT could not compile casa's RDataFrame helper functions")
    ROOT.casa_bench.record_rdf_log()


def _set_threads(ROOT: Any, threads: int) -> None:
    """Run with ``threads`` threads, or refuse if ROOT's thread pool is already another size."""
    if threads < 1:
        raise UsageError(f"threads must be at least 1 (got {threads})")
    if threads == 1:
        if ROOT.IsImplicitMTEnabled():
            ROOT.DisableImplicitMT()
        return
    if not ROOT.IsImplicitMTEnabled():
        ROOT.EnableImplicitMT(threads)
    size = int(ROOT.GetThreadPoolSize())
    if size != threads:
        raise UsageError(
            f"ROOT already runs a thread pool of {size} threads in this process and cannot "
            f"change it to {threads}; use run_rdf_subprocess for each measurement"
        )


def _first_column(df: Any, candidates: Sequence[str], what: str) -> str:
    for name in candidates:
        if df.HasColumn(name):
            return name
    raise DataError(
        f"the input has no {what} branch (looked for {', '.join(candidates)}); "
        "give the query a file with one of them"
    )


def _met(df: Any) -> str:
    """The missing-ET collection of the input: the first of ``MET_COLLECTIONS`` present."""
    names = [f"{name}_pt" for name in MET_COLLECTIONS]
    return _first_column(df, names, "missing-ET").removesuffix("_pt")


def _fill(node: Any, query: str, name: str, expression: str) -> Any:
    """Book a TH1D of ``expression`` (a value or an RVec) in hist's bins."""
    bins, lo, hi = HISTOGRAMS[query][name]
    column = f"{name}_hist_x"
    node = node.Define(column, f"casa_bench::hist_x({expression}, {bins}, {lo!r}, {hi!r})")
    return node.Histo1D((name, name, bins, lo, hi), column)


def _book(df: Any, query: str) -> dict[str, Any]:
    """Book the query's histograms on ``df``; nothing runs yet."""
    if query == "dimuon":
        selected = df.Filter("nMuon == 2", "exactly two muons").Filter(
            "Muon_charge[0] * Muon_charge[1] < 0", "opposite charges"
        )
        mass = "casa_bench::dimuon_mass(Muon_pt, Muon_eta, Muon_phi, Muon_mass)"
        return {"mass": _fill(selected, query, "mass", mass)}
    if query == "adl1":
        return {"met": _fill(df, query, "met", f"{_met(df)}_pt")}
    if query == "adl2":
        return {"jet_pt": _fill(df, query, "jet_pt", "Jet_pt")}
    if query == "adl3":
        return {"jet_pt": _fill(df, query, "jet_pt", "Jet_pt[abs(Jet_eta) < 1]")}
    if query == "adl4":
        selected = df.Filter("Sum(Jet_pt > 40) >= 2", "two jets above 40 GeV")
        return {"met": _fill(selected, query, "met", f"{_met(df)}_pt")}
    if query == "adl5":
        selected = df.Filter(
            "casa_bench::has_z_like_pair(Muon_pt, Muon_eta, Muon_phi, Muon_mass, Muon_charge)",
            "opposite-charge muon pair with 60 < m < 120 GeV",
        )
        return {"met": _fill(selected, query, "met", f"{_met(df)}_pt")}
    if query == "adl6":
        btag = _first_column(df, BTAG_BRANCHES, "jet b-tag")
        trijets = (
            df.Filter("nJet >= 3", "three jets")
            .Define("trijet", "casa_bench::best_trijet(Jet_pt, Jet_eta, Jet_phi, Jet_mass)")
            .Define(
                "trijet_pt", "casa_bench::trijet_pt(Jet_pt, Jet_eta, Jet_phi, Jet_mass, trijet)"
            )
            .Define("trijet_btag", f"Max(Take({btag}, trijet))")
        )
        return {
            "trijet_pt": _fill(trijets, query, "trijet_pt", "trijet_pt"),
            "trijet_btag": _fill(trijets, query, "trijet_btag", "trijet_btag"),
        }
    if query == "adl7":
        leptons = (
            df.Define("Lepton_pt", "Concatenate(Muon_pt, Electron_pt)")
            .Define("Lepton_eta", "Concatenate(Muon_eta, Electron_eta)")
            .Define("Lepton_phi", "Concatenate(Muon_phi, Electron_phi)")
        )
        sum_pt = (
            "casa_bench::isolated_jet_sum_pt(Jet_pt, Jet_eta, Jet_phi, "
            "Lepton_pt, Lepton_eta, Lepton_phi)"
        )
        return {"sum_pt": _fill(leptons, query, "sum_pt", sum_pt)}
    if query == "adl8":
        met = _met(df)
        leptons = df.Filter("nMuon + nElectron >= 3", "three light leptons")
        for part in ("pt", "eta", "phi", "mass", "charge"):
            leptons = leptons.Define(f"Lepton_{part}", f"Concatenate(Muon_{part}, Electron_{part})")
        z_candidates = (
            leptons.Define(
                "Lepton_flavour",
                "Concatenate(ROOT::RVecI(Muon_pt.size(), 13), ROOT::RVecI(Electron_pt.size(), 11))",
            )
            .Define(
                "z_pair",
                "casa_bench::best_sfos_pair(Lepton_pt, Lepton_eta, Lepton_phi, Lepton_mass, "
                "Lepton_charge, Lepton_flavour)",
            )
            .Filter("z_pair.size() == 2", "a same-flavour opposite-charge pair")
        )
        mt = f"casa_bench::third_lepton_mt(Lepton_pt, Lepton_phi, z_pair, {met}_pt, {met}_phi)"
        return {"mt": _fill(z_candidates, query, "mt", mt)}
    raise UsageError(f"unknown query {query!r}: choose one of {', '.join(QUERIES)}")


def _counts(histogram: Any) -> np.ndarray:
    """A TH1D's bin contents with under- and overflow, in hist's ``values(flow=True)`` order."""
    n = histogram.GetNbinsX()
    return np.array([histogram.GetBinContent(i) for i in range(n + 2)], dtype=float)


def run_rdf(query: str, files: list[str], threads: int, tree: str = "Events") -> RDFResult:
    """Run ``query`` over ``files`` with RDataFrame on ``threads`` threads, in this process.

    ROOT's thread count is fixed per process; prefer :func:`run_rdf_subprocess` for
    measurements.
    """
    if query not in HISTOGRAMS:
        raise UsageError(f"unknown query {query!r}: choose one of {', '.join(QUERIES)}")
    if not files:
        raise UsageError("give RDataFrame at least one file")
    for f in files:
        if "://" not in str(f) and not Path(f).is_file():
            raise DataError(f"{f}: no such file")
    ROOT = _import_root()
    _set_threads(ROOT, threads)
    urls = [rdf_url(str(f)) for f in files]
    started = time.perf_counter()
    _declare_helpers(ROOT)
    ROOT.casa_bench.rdf_log.clear()
    try:
        df = ROOT.RDataFrame(tree, urls)
    except Exception as e:
        raise DataError(f"RDataFrame cannot open tree {tree!r} in {', '.join(urls)}: {e}") from e
    booked = _book(df, query)
    count = df.Count()
    events = int(count.GetValue())  # runs the event loop once, filling every histogram
    histograms = {name: _counts(result.GetValue()) for name, result in booked.items()}
    wall = time.perf_counter() - started
    loop = 0.0
    for message in ROOT.casa_bench.rdf_log:
        m = _LOOP_MESSAGE.search(str(message))
        if m:
            loop = float(m[1])
    return RDFResult(
        histograms=histograms,
        events=events,
        wall_seconds=wall,
        jit_seconds=max(wall - loop, 0.0) if loop else 0.0,
        query=query,
        threads=threads,
        loop_seconds=loop,
        files=urls,
    )


def run_rdf_subprocess(
    query: str,
    files: list[str],
    threads: int,
    tree: str = "Events",
    *,
    timeout: float | None = None,
) -> RDFResult:
    """:func:`run_rdf` in a fresh ``python -m casa.bench.rdf`` process: cold, own thread pool.

    The child runs with ``EXTRA_CLING_ARGS=-O2`` unless the environment sets it already.
    """
    return run_rdf_queries_subprocess([query], files, threads, tree, timeout=timeout)[0]


def run_rdf_queries_subprocess(
    queries: Sequence[str],
    files: list[str],
    threads: int,
    tree: str = "Events",
    *,
    timeout: float | None = None,
) -> list[RDFResult]:
    """Run ``queries`` one after the other in one fresh child process (see run_rdf_subprocess).

    The first query pays for compiling casa's helpers; later ones reuse them.
    """
    for query in queries:
        if query not in HISTOGRAMS:
            raise UsageError(f"unknown query {query!r}: choose one of {', '.join(QUERIES)}")
    if not queries:
        raise UsageError("give at least one query")
    if not files:
        raise UsageError("give RDataFrame at least one file")
    what = f"RDataFrame {', '.join(queries)}"
    env = dict(os.environ)
    env.setdefault("EXTRA_CLING_ARGS", EXTRA_CLING_ARGS)
    with tempfile.TemporaryDirectory(prefix="casa-rdf-") as tmp:
        out = Path(tmp) / "result.json"
        command = [sys.executable, "-m", "casa.bench.rdf", "--threads", str(threads)]
        for query in queries:
            command += ["--query", query]
        command += ["--tree", tree, "--json", str(out), *[str(f) for f in files]]
        try:
            proc = subprocess.run(
                command, env=env, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as e:
            raise AnalysisError(f"{what} did not finish within {timeout} s") from e
        data = json.loads(out.read_text()) if out.is_file() else None
    if data is not None and "error" in data:
        kind = getattr(errors, data.get("kind", ""), None)
        if not (isinstance(kind, type) and issubclass(kind, errors.CasaError)):
            kind = AnalysisError
        raise kind(data["error"], details=data.get("details"))
    if proc.returncode != 0 or data is None:
        tail = "\n".join((proc.stderr or "").strip().splitlines()[-30:])
        raise AnalysisError(
            f"{what} failed in its child process (exit code {proc.returncode})",
            details=tail or None,
        )
    return [RDFResult.from_json(r) for r in data["results"]]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m casa.bench.rdf``: run queries one after the other, write their results as JSON.

    The output is ``{"results": [RDFResult, ...]}``, or ``{"error": ..., "kind": ...}`` with
    exit code 1 when a casa error stops the run.
    """
    parser = argparse.ArgumentParser(prog="python -m casa.bench.rdf", description=main.__doc__)
    parser.add_argument("--query", required=True, action="append", choices=QUERIES)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tree", default="Events")
    parser.add_argument("--json", dest="json_path", help="write the result here (default stdout)")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args(argv)
    payload: dict[str, Any]
    try:
        results = [run_rdf(q, args.files, args.threads, args.tree) for q in args.query]
        payload = {"results": [r.to_json() for r in results]}
        code = 0
    except errors.CasaError as e:
        payload = {"error": str(e), "kind": type(e).__name__, "details": e.details}
        code = 1
    text = json.dumps(payload)
    if args.json_path:
        Path(args.json_path).write_text(text)
    else:
        print(text)
    if code:
        print(f"error: {payload['error']}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
