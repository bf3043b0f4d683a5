"""Webhooks as fal sends them: where one may go (``targets``), its signature (``signing``), one
delivery attempt (``delivery``) and the durable outbox the API and every worker drain (``outbox``).
"""
