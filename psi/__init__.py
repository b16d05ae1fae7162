"""psiq: private set intersection, oblivious transfer and PIR."""

__version__ = "0.1.0"
