"""xpod API protos, package ``xpod``."""
