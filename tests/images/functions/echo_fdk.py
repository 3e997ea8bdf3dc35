"""FDK echo: returns the body; X-Echo comes back as a header; X-Status sets the status."""

import fdk


def handle(body, headers):
    out_headers = {"Content-Type": "application/octet-stream"}
    if "x-echo" in headers:
        out_headers["X-Echo"] = headers["x-echo"]
    if headers.get("x-fail") == "1":
        raise ValueError("asked to fail")
    return int(headers.get("x-status", "200")), out_headers, body


if __name__ == "__main__":
    fdk.serve(handle)
