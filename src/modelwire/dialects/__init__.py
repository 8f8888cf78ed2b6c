"""Wire dialects: one module per protocol, each used both as a client surface and as an upstream."""
