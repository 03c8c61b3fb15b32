"""casa bench: the facility measured against plain coffea, RDataFrame and the decompression limit."""
