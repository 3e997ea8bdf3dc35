"""Kiln: a single-host function runner on Docker, built on Trio."""

__version__ = "0.1.0"
