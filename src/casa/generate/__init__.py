"""The synthetic-data generator: NanoAOD-like files of known physics."""
