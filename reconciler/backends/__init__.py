"""Backends: where live state is read from and actions are applied to."""
