"""xpod.v1: the .proto sources and their generated code (DO NOT EDIT the *_pb2*.py files; run `make proto`)."""
