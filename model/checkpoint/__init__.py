"""Everything this project knows about a BitDance checkpoint, each piece once.

- ``layout``: where a checkpoint keeps its files, in either published layout (native, diffusers);
- ``configs``: its config files read once, checked against each other (``read_configs``);
- ``rope``: the LLM config's RoPE, read alike under transformers 4.57 and 5.x, and the rotary embedding's check;
- ``modules``: the modules those configs imply, built on the meta device: the shapes the files must hold;
- ``tensor_files``: safetensors headers checked, tensors read one at a time, files written aligned;
- ``fp8_weights``: pre-quantised fp8 weights in the files: where they may be, their scales checked;
- ``verification``: every check on a checkpoint without loading it (``python -m model.verify``);
- ``loading``: checked files -> modules on a device, tensor by tensor;
- ``memory_plan``: what a generation needs in memory, from the configs alone (``python -m model.plan``);
- ``random_weights``: the one rule random weights are drawn by (tiny checkpoints, the full-size benchmark);
- ``writing`` and ``tiny_checkpoint``: checkpoint folders written in either layout, and the tiny random one
  (``python -m model.tiny``).

This ``__init__`` imports nothing, so that the torch-free ``layout`` can be read without torch, and
``random_weights`` with torch alone (the official code's environment imports it).
"""
