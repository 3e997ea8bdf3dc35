"""Never binds its listener: Kiln answers 504 after the function's start_timeout."""

import time

while True:
    time.sleep(3600)
