"""The request state machine in Redis, shared by the API and the workers.

Records and key names (``records``), the Lua scripts of every transition (``scripts``), the API's
async store (``api_store``), the workers' sync store (``worker_store``), and everything the project
knows about RQ, which carries the requests in its queues (``rq_integration``).
"""
