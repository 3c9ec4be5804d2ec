"""Fault-injection (chaos) tests: a server that misbehaves on purpose, and the invariant
every run must keep whatever it does (see ``server.py`` and ``invariant.py``)."""
