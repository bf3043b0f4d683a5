"""Thin routers: they parse the request, call a service, and shape the response."""
