"""Binds properly, then never answers a call."""

import time

import fdk


def handle(body, headers):
    time.sleep(3600)
    return body


if __name__ == "__main__":
    fdk.serve(handle)
