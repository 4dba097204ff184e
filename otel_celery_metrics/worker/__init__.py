"""The Celery hooks of a worker (and of producers and beat): what is measured, where.

- :mod:`.outcomes` -- the request class Celery's worker builds: task outcomes, runtimes,
  failures and queue waits, recorded in the process that receives the results;
- :mod:`.consume_hook` -- each queue consumer stamps the queue a message came from;
- :mod:`.signals` -- Celery signal receivers (published, received, exemplar spans);
- :mod:`.beat` -- ``celery beat``'s sends and lateness;
- :mod:`.state` -- saturation and stuck tasks read from Celery's worker state;
- :mod:`.hook_checks` -- at worker start, each hook checks it took effect (fail loud);
- :mod:`.patching` -- the one wrap-and-restore helper the hooks above use;
- :mod:`.process_role` -- which Celery process this is (worker, beat, multi launcher, ...);
- :mod:`.resource` -- the ``celery_worker`` resource detector (one identity per worker);
- :mod:`.green` -- gevent/eventlet pools: patch early enough, or say so.

Prefork specifics are not here: :mod:`otel_celery_metrics.pool` owns every fork.
"""
