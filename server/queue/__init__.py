"""The request state machine in Redis, shared by the API and the workers.

Records and key names (``records``), the Lua scripts of every transition (``scripts``), the API's
async store (``api_store``), the workers' sync store (``worker_store``), the webhook outbox both
drain (``webhook_outbox``) and the Redis connection options (``redis_options``). Nothing here imports
the HTTP side (app, routes, middleware, auth, deps, FastAPI): workers import this package freely.
"""
