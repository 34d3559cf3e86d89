"""An example third-party detector package (see docs/plugins.md)."""
