"""The XRootD daemons: the origin and the XCache proxy."""
