"""The delivery service: skims for the ServiceX client, made on the users' own Dask clusters."""
