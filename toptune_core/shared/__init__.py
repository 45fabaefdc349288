"""Shared mode (a demo or field server): visitors (private workspaces, limits, expiry) and paths (the allow-list)."""
