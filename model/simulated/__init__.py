"""The simulated BitDance model: the real endpoint's behaviour without torch, weights or a GPU.

``BITDANCE_MODEL_PATH=simulated`` (``python -m worker --model simulated``, ``make run MODEL=simulated``;
``core.settings.is_simulated_model``) makes a worker load ``SimulatedPipeline`` instead of the
real one. It goes through the same task runner as the real model (queue, records, progress logs,
cancellation, safety flag, storage, webhooks, result shape); only ``generate_batch`` differs: it
waits as long as the real model would take on a GPU (``profile``) and draws a deterministic
picture marked as simulated (``picture``).

Nothing in this package imports torch.
"""
