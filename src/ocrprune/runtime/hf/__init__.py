"""The `hf` engine: DeepSeek-OCR on transformers' native classes, with the RTPrune hook between
the vision encoder and the decoder. The numerics reference every other engine is held to.

`loading` (checkpoint folder or hub id to a checked model), `preprocess` (page image to crops and
prompt), `prune_hook` (RTPrune on each image's projected tokens), `generation` (decoding rules),
`engine` (the batch: encode, prune, prefill, decode), `backend` (the `Backend` the run uses),
`batch_size`, `clock`, `tiny` (the built-in tiny-random model).
"""
