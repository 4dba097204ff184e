"""The package version, read by hatchling and reported as the meter's version."""

__version__ = "0.1.0"
