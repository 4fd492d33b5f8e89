"""The gRPC adapter over ``scheduler.service``: conversions, servicers, the server, its front-end
processes, authentication (bearer tokens) and gRPC metrics. The only server-side code that
imports generated protobuf code."""
