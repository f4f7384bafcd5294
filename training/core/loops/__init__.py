"""Training loops, each readable top to bottom and reporting through callbacks.

``pretrain.train(cfg: PretrainConfig, callbacks) -> summary`` is the pretraining loop.
"""
