"""Answers HTTP 500 to every call (a broken contract): Kiln kills the container."""

import fdk


class Broken(fdk._make_request_handler(lambda b, h: b"")):
    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self._reply(500, {}, b"internal error")


if __name__ == "__main__":
    import os

    d = fdk.listener_dir()
    server = fdk._UnixServer(os.path.join(d, "phony500.sock"), Broken)
    os.chmod(os.path.join(d, "phony500.sock"), 0o666)
    os.symlink("phony500.sock", os.path.join(d, "lsnr.sock"))
    server.serve_forever()
