"""The ``psiq`` command line (click), thin over the :mod:`psi` and :mod:`pir` libraries."""

import os

# numpy's OpenBLAS starts one thread per core at import, and each busy-waits for a while before
# it sleeps: measured 0.185 CPU-s to import numpy on this 2-core machine against 0.065 with
# a short timeout, CPU that a PSI run needs for its workers (ECDH 10^5 pair: median 36 ms
# less wall time over 6 interleaved runs). The threads still serve multi-threaded BLAS (PIR
# answer times unchanged); a value set by the user wins.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
