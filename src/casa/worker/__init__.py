"""What runs inside Dask workers and schedulers: column and tree caches, allocator, decompression, data token, dashboard guard."""
