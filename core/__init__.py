"""The core the API and the workers share: settings, the endpoint's wire schemas and fal's protocol
shapes, errors, storage, logging, the request state machine in Redis (``core.requests``) and webhooks
(``core.webhooks``). It imports neither FastAPI nor torch, so a worker and the API import it alike.
"""
