"""The token issuer daemon: its process, its Unix socket server and its HTTP side."""
