"""Training: the trainer (:mod:`.loop`, :func:`.loop.train`), its configuration (:mod:`.config`),
batches (:mod:`.batches`), the built-in synthetic scenes (:mod:`.synthetic`), multi-process
set-up (:mod:`.distributed`) and the per-epoch contact sheet (:mod:`.epoch_report`).

Layer: the top of the library; it may import every other layer but the command line. Nothing is
imported here, so ``hfkernels.training.config`` loads without the trainer.
"""
