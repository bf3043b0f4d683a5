"""A load-test kit for fal-compatible endpoints (this server or fal's hosted ``fal-ai/bitdance``), on Locust.

``python -m loadtest --url http://127.0.0.1:8000 --concurrency 50 --requests 1000`` drives the real
request flow (submit, status polling or the status stream, result, image download; or the sync run
route; or the real ``fal-client``) from Locust users, closed-loop or as open-loop Poisson arrivals,
and reports per-phase latencies, throughput, errors by kind and goodput under an SLO.

Modules, in the order a run uses them: ``config`` (options), ``inputs`` (what is sent), ``flows``
(one request end to end, timed per phase), ``users`` (the Locust users), ``runner`` (Locust's local,
master and worker runners; progress), ``report`` (figures, JSON, CSV), ``server_metrics`` (the
server's own ``/metrics`` for comparison), ``sweep`` (several rates and a chart). The goals benchmark on
the simulated model is ``bench.fleet_goals`` (``make bench-loadtest``).
"""
