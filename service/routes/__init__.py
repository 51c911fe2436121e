"""HTTP route handlers: thin views over ``AppState``."""
