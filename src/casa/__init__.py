"""casa: an analysis facility for high-energy physics that anyone can run."""

__version__ = "0.1.0"

__all__ = ["connect", "datasets", "fileset", "run", "uproot_options"]


def __getattr__(name: str):
    """Notebook helpers, imported on first use (``from casa import connect``)."""
    if name in __all__:
        from casa import notebook

        return getattr(notebook, name)
    raise AttributeError(f"module 'casa' has no attribute {name!r}")
