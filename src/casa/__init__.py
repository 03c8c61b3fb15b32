"""casa: an analysis facility for high-energy physics that anyone can run."""

__version__ = "0.1.0"
