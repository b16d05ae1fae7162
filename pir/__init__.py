"""Keyword PIR blacklist lookup (匿踪查询): OPRF-keyed records served by SimplePIR.

``pir.api.setup`` builds a table version, ``pir.service.PirService`` serves it, ``pir.api.lookup``
asks about ids without the service learning which. See docs/PIR.md for parameters and figures.
"""

__all__ = ["api", "database", "lwe", "oprf", "protocol", "quota", "service", "store"]
