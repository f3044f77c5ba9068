"""The national registry: node registration, the signed directory, query routing, consents."""
