"""Binds like an FDK, then answers HTTP 500 to /call — a broken contract: Kiln kills it."""

import fdk

sock = fdk.bind_listener(fdk.listener_path())
while True:
    conn, _ = sock.accept()
    rfile = conn.makefile("rb")
    try:
        while fdk.read_request(rfile) is not None:
            fdk.write_response(conn, 500, [("Content-Type", "text/plain")], b"internal error")
    except (OSError, fdk.BadRequest):
        pass
    finally:
        rfile.close()
        conn.close()
