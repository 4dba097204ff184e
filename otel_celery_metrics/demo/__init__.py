"""A self-contained demo: an instrumented prefork worker on a broker that needs no server."""
