"""Tokens (issue, discover, verify), accounts, and the key material they rest on."""
