"""The built-in coffea processors: a dimuon spectrum and the eight IRIS-HEP ADL benchmarks."""

from __future__ import annotations

from coffea.processor import ProcessorABC

from casa.analysis.processors.adl import (
    ADL1Processor,
    ADL2Processor,
    ADL3Processor,
    ADL4Processor,
    ADL5Processor,
    ADL6Processor,
    ADL7Processor,
    ADL8Processor,
)
from casa.analysis.processors.dimuon import DimuonProcessor

#: The built-in processors by the name users give on the command line.
BUILTIN_PROCESSORS: dict[str, type[ProcessorABC]] = {
    "dimuon": DimuonProcessor,
    "adl1": ADL1Processor,
    "adl2": ADL2Processor,
    "adl3": ADL3Processor,
    "adl4": ADL4Processor,
    "adl5": ADL5Processor,
    "adl6": ADL6Processor,
    "adl7": ADL7Processor,
    "adl8": ADL8Processor,
}

__all__ = [
    "BUILTIN_PROCESSORS",
    "ADL1Processor",
    "ADL2Processor",
    "ADL3Processor",
    "ADL4Processor",
    "ADL5Processor",
    "ADL6Processor",
    "ADL7Processor",
    "ADL8Processor",
    "DimuonProcessor",
]
