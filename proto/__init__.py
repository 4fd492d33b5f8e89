"""Protocol buffers of the xpod API (``xpod/v1/*.proto``) and their generated code."""
