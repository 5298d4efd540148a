"""Runtimes that start ranks: local processes (``afmi run``), function runtimes."""
