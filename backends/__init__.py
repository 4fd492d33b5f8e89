"""Vendor backends, one folder each. Only ``backends/<vendor>/_sdk.py`` imports a vendor SDK."""
