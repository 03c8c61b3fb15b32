"""Data: the catalog, storage, the generator and the sources files are read from."""
