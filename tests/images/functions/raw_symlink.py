"""No FDK: the phony socket + relative symlink dance by hand, and a hand-written responder."""

import os
import socket

d = os.path.dirname(os.environ["FN_LISTENER"][len("unix:"):])
phony = os.path.join(d, "phony-raw.sock")
s = socket.socket(socket.AF_UNIX)
s.bind(phony)
os.chmod(phony, 0o666)
s.listen(4)
os.symlink("phony-raw.sock", os.path.join(d, "lsnr.sock"))
while True:
    conn, _ = s.accept()
    buf = b""
    while True:
        while b"\r\n\r\n" not in buf:
            data = conn.recv(65536)
            if not data:
                break
            buf += data
        if b"\r\n\r\n" not in buf:
            break
        head, buf = buf.split(b"\r\n\r\n", 1)
        length = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        while len(buf) < length:
            buf += conn.recv(65536)
        body, buf = buf[:length], buf[length:]
        out = b"raw:" + body
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nFn-Http-Status: 201\r\nFn-Http-H-X-Raw: yes\r\n"
            b"Content-Length: " + str(len(out)).encode() + b"\r\n\r\n" + out
        )
    conn.close()
