"""The request state machine in Redis, shared by the API and the workers.

Records and key names (``records``), the Lua scripts of every transition (``scripts``), the API's
async store (``api_store``) and the workers' sync store (``worker_store``).
"""
