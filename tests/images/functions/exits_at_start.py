"""Fails at start: Kiln answers 502 'failed to initialize' with this output."""

import sys

print("cannot load model: missing weights.bin", file=sys.stderr, flush=True)
sys.exit(3)
