"""Every benchmark, and the official code they compare against, outside the library (``make bench-*``).

Nothing in ``core``, ``server``, ``worker`` or ``model`` imports this package. Modules, one per make target:
``model_speed`` (``make bench-model``, ``make bench-gpu``), ``load_memory`` (``make bench-load``),
``api_capacity`` with its load tools ``http_load`` and ``recovery_sweep`` (``make bench-api``),
``cli_speed`` (``make bench-cli``), ``fleet_goals`` (``make bench-loadtest``); ``official/`` runs the
upstream pipeline in its own environment for the model benchmark and the parity tests.
"""
