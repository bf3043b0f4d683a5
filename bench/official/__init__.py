"""The official BitDance pipeline (github.com/shallowdream204/BitDance) in its own environment.

``environment`` prepares upstream's virtual environment (transformers 4.57, its pins), ``client``
(``OfficialPipeline``) starts ``upstream`` there as a subprocess and talks to it one JSON line at a
time; ``upstream`` imports only torch, the standard library, ``model.checkpoint.random_weights`` and
the official checkout's code. Nothing here is imported by the server, the workers or the model library.
"""
