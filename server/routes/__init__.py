"""Thin routers: they parse the request, call jobs/storage, and shape the response."""
