"""Fails at start: prints an error to stderr and exits 3 (Kiln: 502 'failed to initialize')."""

import sys

print("cannot load model: missing weights.bin", file=sys.stderr, flush=True)
sys.exit(3)
