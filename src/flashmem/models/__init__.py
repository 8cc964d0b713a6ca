"""The frozen backbone and where it comes from: the one wall around transformers' internals
(backbone), loading by alias, hub id, folder, GGUF or `random:NAME`, the packaged wheels, the random
architectures, the device/dtype/thread runtime and tiny test models. The bottom layer: it imports
nothing of flashmem but the top-level shared modules."""
