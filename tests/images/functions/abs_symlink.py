"""Binds a socket, then makes lsnr.sock an ABSOLUTE symlink to it: Kiln must refuse to start it."""

import os
import socket
import time

link = "/" + os.environ["FN_LISTENER"][len("unix:"):].lstrip("/")
phony = os.path.join(os.path.dirname(link), "phony-abs.sock")
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(phony)
s.listen(1)
os.chmod(phony, 0o666)
os.symlink(phony, link)  # absolute: breaks the contract
time.sleep(3600)
