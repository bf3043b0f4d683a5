"""BitDance text-to-image model: native checkpoint loading and the next-patch diffusion pipeline.

``from model.pipeline import BitDancePipeline`` (torch); the size helpers in ``model.resolutions`` need no torch.
"""
