"""Binds a socket, then makes lsnr.sock an ABSOLUTE symlink: Kiln must refuse it."""

import os
import socket
import time

d = os.path.dirname(os.environ["FN_LISTENER"][len("unix:"):])
phony = os.path.join(d, "phony-abs.sock")
s = socket.socket(socket.AF_UNIX)
s.bind(phony)
s.listen(1)
os.symlink(phony, os.path.join(d, "lsnr.sock"))
time.sleep(3600)
