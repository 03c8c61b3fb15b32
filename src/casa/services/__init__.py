"""The facility services and the supervisor that runs them."""
