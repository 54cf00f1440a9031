"""Language models: the registry of built-in models, loading one onto a device, its forward pass at loss
positions, and the tiny model the tests build."""
