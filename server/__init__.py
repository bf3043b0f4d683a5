"""The fal-compatible HTTP API for BitDance (``fal-ai/bitdance``). Imports no torch, model or worker code."""
