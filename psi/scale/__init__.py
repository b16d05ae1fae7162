"""Scale and recovery for PSI sessions: bucketed sub-sessions in bounded memory, a work dir
with checkpoints to resume from, and reconnection after a dropped connection.

* :mod:`psi.scale.buckets` — the one streaming pass that splits an input into key buckets;
* :mod:`psi.scale.manifest` — the work dir's manifest and the resume checks;
* :mod:`psi.scale.session` — :class:`BucketedSession`, one party of a bucketed session;
* :mod:`psi.scale.runner` — serve / connect over TCP+TLS with reconnection.

See docs/SCALE.md.
"""

from .session import BucketedSession, ScaleOptions, parse_buckets, parse_size

__all__ = ["BucketedSession", "ScaleOptions", "parse_buckets", "parse_size"]
