"""Where chunks run, as the caller sees it: the backend contract, its registry, and the backends (local, gateway, slurm, htcondor)."""
