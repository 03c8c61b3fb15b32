"""The gateway daemon: dask-gateway-server's configuration, and casa's parts that run inside it."""
