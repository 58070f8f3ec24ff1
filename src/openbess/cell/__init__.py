"""Cell physics: parameter sets, the equivalent-circuit model, thermal and ageing models."""
