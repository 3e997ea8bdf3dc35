"""Never binds its listener: Kiln answers 504 after start_timeout."""

import time

time.sleep(3600)
