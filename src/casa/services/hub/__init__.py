"""The hub daemon: JupyterHub's configuration, casa's authenticator and spawner that run inside it."""
