"""No FDK: the phony socket + relative symlink dance by hand, and a hand-written HTTP/1.1
responder (keep-alive, Content-Length bodies). Answers "raw:<body>" with caller status 201."""

import os
import socket

link = "/" + os.environ["FN_LISTENER"][len("unix:"):].lstrip("/")
d = os.path.dirname(link)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(os.path.join(d, "phony-raw.sock"))
s.listen(4)
os.chmod(os.path.join(d, "phony-raw.sock"), 0o666)
os.symlink("phony-raw.sock", link)  # relative, made last: the listener is ready


def serve(conn):
    buf = b""
    while True:
        while b"\r\n\r\n" not in buf:
            data = conn.recv(65536)
            if not data:
                return
            buf += data
        head, buf = buf.split(b"\r\n\r\n", 1)
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(buf) < length:
            data = conn.recv(65536)
            if not data:
                return
            buf += data
        body, buf = buf[:length], buf[length:]
        out = b"raw:" + body
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nFn-Http-Status: 201\r\nFn-Http-H-X-Raw: yes\r\n"
            b"Content-Length: " + str(len(out)).encode() + b"\r\n\r\n" + out
        )


while True:
    conn, _ = s.accept()
    try:
        serve(conn)
    except OSError:
        pass
    finally:
        conn.close()
