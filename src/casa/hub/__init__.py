"""JupyterHub for casa: login, each user's JupyterLab, credentials minted at spawn."""
