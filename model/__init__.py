"""BitDance text-to-image model: the library the workers and the command-line tools run.

``from model.pipeline import BitDancePipeline`` (torch) implements ``model.interface.Pipeline``, the
contract a worker serves (torch-free, as are ``model.resolutions``, ``model.seeds`` and
``model.simulated``); ``model.checkpoint`` holds everything known about a checkpoint. The library
imports nothing of ``core``, ``server``, ``worker`` or the tooling; only its command-line modules
(``generate``, ``verify``, ``plan``, ``tiny``) may read the project's settings.
"""
