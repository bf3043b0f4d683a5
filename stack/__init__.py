"""Tooling around the server, never imported by the API or the workers: the local stack launcher
(``python -m stack``, what ``make run`` starts), its TLS helper and the chaos test (``make chaos``).
The benchmarks live in ``bench``."""
