"""Tools for testing code that uses afmi, and for testing channel drivers.

* :mod:`afmi.testing.conformance`: cases every channel driver must pass.
"""

from afmi.testing import conformance

__all__ = ["conformance"]
