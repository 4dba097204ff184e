"""What users install, checked as they get it: ``scripts/check-dist`` runs this.

1. ``python -m build`` makes the sdist and, from it, the wheel; ``twine check --strict``
   checks their metadata (the README renders on the package index).
2. The contents: only the package in the wheel (no tests, no bench), ``py.typed``, the
   licence, every entry point users and OpenTelemetry's loaders rely on, one version
   (``otel_celery_metrics/version.py``) in the file names, the metadata and the CHANGELOG.
3. The wheel, then the sdist in its place: a fresh virtual environment installs the artifact with
   ``[all]`` (not the source tree, not editable) and, from a folder outside the checkout,
   every entry point resolves, both CLIs answer ``--version`` and ``--help``, and the demo
   (``opentelemetry-instrument`` finding ``celery_metrics`` in a prefork worker, ``-c 2``)
   shows the exact task counts.

pip's cache is reused, so a second run downloads nothing. Exit status 0 when everything
holds; otherwise every failed check is printed and the status is 1.
"""

from __future__ import annotations

import argparse
import configparser
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "otel_celery_metrics"
DIST_NAME = "otel_celery_metrics"
#: The entry points that must ship, whatever else pyproject.toml declares.
REQUIRED_ENTRY_POINTS = {
    ("console_scripts", "otel-celery-exporter"),
    ("console_scripts", "otel-celery-metrics-demo"),
    ("opentelemetry_instrumentor", "celery_metrics"),
    ("opentelemetry_metrics_exporter", "celery_metrics_prometheus"),
    ("_opentelemetry_opamp", "pre_sdk_init_function"),
    ("_opentelemetry_opamp", "post_sdk_init_function"),
    ("opentelemetry_resource_detector", "celery_worker"),
}
#: The demo's 12 tasks: 4 resizes, 4 charges (one declined), 4 syncs retried once.
DEMO_TASKS = 12
DEMO_COUNTS = "{'SUCCESS': 11.0, 'FAILURE': 1.0, 'RETRY': 4.0}"

_failures: list[str] = []


def check(ok: bool, what: str) -> None:
    print(f"  {'ok ' if ok else 'FAIL'} {what}", flush=True)
    if not ok:
        _failures.append(what)


def run(cmd: list[str], *, cwd: Path | None = None, timeout: float = 600) -> str:
    started = time.monotonic()
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                            check=False)
    took = time.monotonic() - started
    if result.returncode != 0:
        print(result.stdout[-4000:] + result.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"check-dist: {' '.join(cmd)} exited {result.returncode}")
    shown = " ".join(Path(cmd[0]).name if i == 0 else a for i, a in enumerate(cmd[:4])
                     if "\n" not in a)
    print(f"  ran  {shown} ... ({took:.0f} s)", flush=True)
    return result.stdout + result.stderr


def project_version() -> str:
    text = (ROOT / PACKAGE / "version.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"$', text, re.MULTILINE)
    if match is None:
        raise SystemExit("check-dist: no __version__ in otel_celery_metrics/version.py")
    return match.group(1)


def declared_entry_points() -> set[tuple[str, str, str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    out = {("console_scripts", k, v) for k, v in project["scripts"].items()}
    for group, entries in project["entry-points"].items():
        out |= {(group, k, v) for k, v in entries.items()}
    return out


def check_metadata_files(version: str) -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text()
    # "## [0.1.0] - Unreleased" until the release, then "## [0.1.0] - 2027-01-15".
    check(re.search(rf"^## \[{re.escape(version)}\] - ", changelog, re.MULTILINE) is not None,
          f"CHANGELOG.md has a release section ## [{version}] for version.py's version")


def check_wheel(wheel: Path, version: str) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    info = f"{DIST_NAME}-{version}.dist-info"
    check(wheel.name.startswith(f"{DIST_NAME}-{version}-py3-none-any"),
          f"wheel is pure Python and named for {version}: {wheel.name}")
    stray = [n for n in names if not n.startswith((f"{PACKAGE}/", f"{info}/"))]
    check(not stray, f"wheel holds only {PACKAGE}/ and its dist-info (stray: {stray[:5]})")
    check(not [n for n in names if re.search(r"(^|/)(tests?|bench)/", n)],
          "no tests or bench in the wheel")
    check(f"{PACKAGE}/py.typed" in names, "py.typed in the wheel")
    check(f"{info}/licenses/LICENSE" in names, "LICENSE in the wheel's dist-info")
    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read(f"{info}/METADATA").decode()
        entry_text = archive.read(f"{info}/entry_points.txt").decode()
    check(f"\nVersion: {version}\n" in metadata, f"METADATA Version: {version}")
    for extra in ("all", "exporter", "prometheus", "otlp", "otlp-grpc", "instruments"):
        check(f"Provides-Extra: {extra}\n" in metadata, f"METADATA Provides-Extra: {extra}")
    parser = configparser.ConfigParser(delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(entry_text)
    shipped = {(g, k, v.strip()) for g in parser.sections() for k, v in parser[g].items()}
    check(shipped == declared_entry_points(),
          "entry_points.txt is what pyproject.toml declares "
          f"(differs: {sorted(shipped ^ declared_entry_points())})")
    missing = REQUIRED_ENTRY_POINTS - {(g, k) for g, k, _ in shipped}
    check(not missing, f"every required entry point ships (missing: {sorted(missing)})")


def check_sdist(sdist: Path, version: str) -> None:
    top = f"{DIST_NAME}-{version}"
    check(sdist.name == f"{top}.tar.gz", f"sdist named for {version}: {sdist.name}")
    with tarfile.open(sdist) as archive:
        names = {n.removeprefix(f"{top}/") for n in archive.getnames()}
    for needed in ("pyproject.toml", "README.md", "CHANGELOG.md", "LICENSE", "PKG-INFO",
                   f"{PACKAGE}/py.typed", f"{PACKAGE}/version.py"):
        check(needed in names, f"sdist has {needed}")
    junk = [n for n in names if n.split("/", 1)[0] in (".venv", ".tools", ".git", "dist")
            or n.startswith(".venv-")]
    check(not junk, f"no .venv, .venv-*, .tools, .git or dist in the sdist ({junk[:3]})")


# Runs inside the fresh venv: loads every entry point of ours, reports where the package
# was imported from (it must be the venv, not the checkout).
_PROBE = """
import sys
from importlib import metadata
import otel_celery_metrics
dist = metadata.distribution("otel-celery-metrics")
print("version", dist.version, otel_celery_metrics.__version__)
print("file", otel_celery_metrics.__file__)
direct = dist.read_text("direct_url.json") or ""
print("editable", '"editable": true' in direct)
for ep in dist.entry_points:
    ep.load()
    print("loaded", ep.group, ep.name)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fresh_venv(work: Path) -> Path:
    """A venv with no pip of its own (ensurepip takes 20 s here): the checkout's pip
    installs into it with ``--python``; returns its interpreter."""
    venv = work / "venv"
    shutil.rmtree(venv, ignore_errors=True)
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    return venv / "bin" / "python"


def pip_install(py: Path, *args: str, cwd: Path) -> None:
    # --no-compile: nothing here needs .pyc files ahead of the first import (saves ~30 s).
    run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-compile",
         "--disable-pip-version-check", *args], cwd=cwd)


def check_install(artifact: Path, version: str, py: Path, work: Path) -> None:
    kind = "wheel" if artifact.suffix == ".whl" else "sdist"
    print(f"== install the {kind} with [all]: {artifact.name}", flush=True)
    pip_install(py, f"{artifact}[all]", cwd=work)
    bindir = py.parent
    probe = run([str(py), "-c", _PROBE], cwd=work)
    check(f"version {version} {version}" in probe,
          f"{kind}: installed metadata and __version__ are {version}")
    check(f"file {py.parent.parent}/lib/" in probe,
          f"{kind}: imported from the venv, not the checkout")
    check("editable False" in probe, f"{kind}: not an editable install")
    loaded = set(re.findall(r"^loaded (\S+) (\S+)$", probe, re.MULTILINE))
    check(loaded >= REQUIRED_ENTRY_POINTS,
          f"{kind}: every entry point loads (missing: {sorted(REQUIRED_ENTRY_POINTS - loaded)})")
    for cli in ("otel-celery-exporter", "otel-celery-metrics-demo"):
        out = run([str(bindir / cli), "--version"], cwd=work)
        check(out.strip() == f"{cli} {version}", f"{kind}: {cli} --version prints {version}")
    helptext = run([str(bindir / "otel-celery-exporter"), "--help"], cwd=work)
    check("--broker-url" in helptext and "--static-label" in helptext,
          f"{kind}: otel-celery-exporter --help lists its flags")
    demo = run([str(bindir / "otel-celery-metrics-demo"), "--port", str(free_port()),
                "--tasks", str(DEMO_TASKS)], cwd=work, timeout=240)
    check(f"/metrics shows {DEMO_COUNTS}" in demo,
          f"{kind}: the demo's prefork worker under opentelemetry-instrument counts "
          f"{DEMO_COUNTS}")


def check_installs(wheel: Path, sdist: Path, version: str, work: Path) -> None:
    """The wheel into a fresh venv, then the sdist in its place: pip builds it (the wheel
    from the sdist, with hatchling in an isolated build) and reinstalls it alone, the
    dependencies of ``[all]`` being the same and already there."""
    py = fresh_venv(work)
    check_install(wheel, version, py, work)
    run([sys.executable, "-m", "pip", "--python", str(py), "uninstall", "-y", "-q",
         "otel-celery-metrics"], cwd=work)
    gone = subprocess.run([str(py), "-c", "import otel_celery_metrics"], cwd=work,
                          capture_output=True, check=False)
    check(gone.returncode != 0, "the wheel's package is gone before the sdist goes in")
    check_install(sdist, version, py, work)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/check-dist", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", type=Path, help="build and install in this folder and keep it")
    parser.add_argument("--no-install", action="store_true",
                        help="build and check the artifacts only (no fresh venvs)")
    args = parser.parse_args(argv)
    version = project_version()
    work = args.keep or Path(tempfile.mkdtemp(prefix="otel-celery-check-dist-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        print(f"== build {version} (sdist, then the wheel from it) into {work}/dist", flush=True)
        dist = work / "dist"
        shutil.rmtree(dist, ignore_errors=True)
        run([sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)])
        wheel, = dist.glob("*.whl")
        sdist, = dist.glob("*.tar.gz")
        print("== metadata and contents", flush=True)
        out = run([sys.executable, "-m", "twine", "check", "--strict", str(wheel), str(sdist)])
        check(out.count("PASSED") == 2, "twine check --strict passes both (README renders)")
        check_metadata_files(version)
        check_wheel(wheel, version)
        check_sdist(sdist, version)
        if not args.no_install:
            check_installs(wheel, sdist, version, work)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    took = time.monotonic() - started
    if _failures:
        print(f"check-dist: {len(_failures)} check(s) failed in {took:.0f} s:", file=sys.stderr)
        for what in _failures:
            print(f"  {what}", file=sys.stderr)
        return 1
    print(f"check-dist: every check passed in {took:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
