"""Binds its listener properly (FDK), then never answers a call."""

import threading

import fdk


def handle(body, headers):
    threading.Event().wait()  # forever
    return body


if __name__ == "__main__":
    fdk.serve(handle)
