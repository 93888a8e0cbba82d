"""Circuit breakers: state machine, registry, shared Redis state, HTTP transports."""
