"""The kernel API: the public fusion and loss functions (:mod:`.fusion`, :mod:`.losses`), their
plain-PyTorch oracles (:mod:`.reference`, :mod:`.loss_reference`), argument checks
(:mod:`.validate`), the backend registry (:mod:`.backends`, filled by :mod:`hfkernels.ops`),
shared separable filters (:mod:`.filters`) and the compiled extension's loader (:mod:`.ext`).

Layer: the bottom. Nothing here imports guidance, training, evaluation, metrics, io or the
command line; the one exception is ``fuse_color``'s default guide (imported when called).
"""
