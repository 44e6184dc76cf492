"""The plan's job builders, one module per stage (Plan.data, Plan.train, ...)."""
