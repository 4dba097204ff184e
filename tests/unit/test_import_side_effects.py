"""Importing the package does nothing: no thread, no socket, no environment, no provider.

Checked in a fresh interpreter, with the operations that would betray work at import
(thread start, socket creation, fork hooks, environment reads from our own files)
patched to record themselves before anything of ours is imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from tests.support import REPO

PROBE = textwrap.dedent(
    r"""
    import json, os, pkgutil, socket, sys, threading
    from collections.abc import MutableMapping

    OURS = os.sep + "otel_celery_metrics" + os.sep
    seen = {"env": [], "threads": [], "sockets": [], "fork_hooks": []}

    def ours_calling(depth=2):
        # The code that did it directly (past os.getenv and friends), if it is ours:
        # a third-party module that reads the environment while we import it is not us.
        frame = sys._getframe(depth)
        while frame is not None and frame.f_code.co_filename in (os.__file__, "<frozen os>"):
            frame = frame.f_back
        if frame is not None and OURS in frame.f_code.co_filename:
            return f"{frame.f_code.co_filename}:{frame.f_lineno}"
        return None

    class TracedEnviron(MutableMapping):
        def __init__(self, real):
            self._real = real
        def _note(self, key):
            where = ours_calling(3)
            if where:
                seen["env"].append(f"{key} at {where}")
        def __getitem__(self, key):
            self._note(key); return self._real[key]
        def get(self, key, default=None):
            self._note(key); return self._real.get(key, default)
        def __contains__(self, key):
            self._note(key); return key in self._real
        def __iter__(self):
            self._note("*"); return iter(self._real)
        def __len__(self):
            return len(self._real)
        def __setitem__(self, key, value):
            self._note(key); self._real[key] = value
        def __delitem__(self, key):
            self._note(key); del self._real[key]
        def copy(self):
            self._note("*"); return dict(self._real)

    os.environ = TracedEnviron(os.environ)
    real_start = threading.Thread.start
    def start(self, *a, **k):
        seen["threads"].append(self.name); return real_start(self, *a, **k)
    threading.Thread.start = start
    real_init = socket.socket.__init__
    def sock_init(self, *a, **k):
        seen["sockets"].append(ours_calling() or "elsewhere"); return real_init(self, *a, **k)
    socket.socket.__init__ = sock_init
    real_register = os.register_at_fork
    def register_at_fork(**k):
        where = ours_calling()
        if where:
            seen["fork_hooks"].append(where)
        return real_register(**k)
    os.register_at_fork = register_at_fork

    threads_before = threading.active_count()
    import otel_celery_metrics
    # The package itself leaves the extras alone; some submodules are SDK plugins
    # (the resource detector) that only the SDK imports, so they may import it.
    seen["sdk_imported"] = "opentelemetry.sdk" in sys.modules
    seen["celery_imported"] = "celery" in sys.modules
    modules = ["otel_celery_metrics"]
    # Every module, subpackages' too (the exporter, the SDK adapter's parts), but the demo's:
    # otel_celery_metrics.demo.app is a Celery application, which reads its settings at
    # import as applications do.
    for info in pkgutil.walk_packages(otel_celery_metrics.__path__, "otel_celery_metrics."):
        if info.name.startswith("otel_celery_metrics.demo."):
            continue
        __import__(info.name)
        modules.append(info.name.removeprefix("otel_celery_metrics."))

    from opentelemetry.metrics import _internal as metrics_api
    seen["modules"] = modules
    seen["threads_after"] = threading.active_count() - threads_before
    seen["meter_provider_set"] = metrics_api._METER_PROVIDER is not None
    print(json.dumps(seen))
    """
)


def _probe() -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def test_importing_the_package_has_no_side_effects() -> None:
    seen = _probe()
    # The probe really imported our modules (otherwise this test could not fail).
    ours = {
        "instrumentor", "core.metric_table", "recording.settings", "_sdk_setup", "sdk_adapter",
        "pool.prefork",
    }
    assert ours <= set(seen["modules"])  # type: ignore[arg-type]
    assert seen["env"] == [], "environment read at import"
    assert seen["threads"] == [] and seen["threads_after"] == 0, "thread started at import"
    assert seen["sockets"] == [], "socket created at import"
    assert seen["fork_hooks"] == [], "fork hook registered at import"
    assert seen["meter_provider_set"] is False, "meter provider created at import"
    # `import otel_celery_metrics` leaves the extras alone: the SDK and Celery are optional.
    assert seen["sdk_imported"] is False
    assert seen["celery_imported"] is False
