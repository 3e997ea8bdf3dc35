"""Function logs: capture, store, mirror, forward, follow."""
