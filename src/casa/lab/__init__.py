"""What runs inside each user's JupyterLab server: the dashboards extension and the example notebooks."""
