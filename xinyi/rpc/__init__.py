"""The gRPC layer shared by nodes, the registry and clients: channels, authentication,
status details, and server bootstrap. The domain core (xinyi.*, node.query, registry.routing)
does not import this package."""
