"""What both ways in share: the in-process instrumentor and the standalone exporter.

- :mod:`.metric_table` -- the one table of metrics (names, kinds, units, attributes, buckets);
- :mod:`.caps` -- cardinality caps on attribute values;
- :mod:`.parsing` -- histogram boundaries and booleans given as text;
- :mod:`.queue_wait` -- the queue-wait rule (publish / received / eta) and its header names;
- :mod:`.routing` -- where the ``queue`` label comes from (consumed-from, bindings);
- :mod:`.safety` -- failure containment (:class:`~.safety.FailureLog`);
- :mod:`.values` -- the one check of numbers from outside the process (bad values, wrong
  clocks), and the bounds it checks them against;
- :mod:`.web_config`, :mod:`.web_serving` -- the exporter-toolkit web config file (TLS,
  basic auth) and serving behind it, for the worker's and the exporter's ``/metrics``.

The bottom layer: it imports nothing else of the package (``[tool.importlinter]``).
"""
