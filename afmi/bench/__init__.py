"""The ``afmi bench`` suite: channel ping-pong, collective latency, anchors, calibration.

* :mod:`afmi.bench.measure` - OSU-style measurements on afmi channels.
* :mod:`afmi.bench.anchors` - the same ping-pong with plain sockets and mpi4py.
* :mod:`afmi.bench.calibrate` - fitting the model and writing a model file.
* :mod:`afmi.bench.accuracy` - predicted against measured, and the ``fast`` choice.
* :mod:`afmi.bench.report` - progress, tables, JSON, PNG plots.
* :mod:`afmi.bench.suite` - one whole run; :mod:`afmi.bench.cli` - the command.

``afmi bench loader`` hands over to :mod:`afmi.bench.loader` (when present),
which defines ``add_arguments(parser)`` and ``run(args) -> int``.
"""
