"""FDK echo: returns the body. Header X-Echo comes back as X-Echo (sent as Fn-Http-H-X-Echo);
X-Status sets the caller-facing status; X-Fail: 1 raises (the FDK answers 502)."""

import fdk


def handle(body, headers):
    if headers.get("x-fail") == "1":
        raise ValueError("asked to fail")
    out_headers = {"Content-Type": headers.get("content-type", "application/octet-stream")}
    if "x-echo" in headers:
        out_headers["X-Echo"] = headers["x-echo"]
    return int(headers.get("x-status", "200")), out_headers, body


if __name__ == "__main__":
    fdk.serve(handle)
