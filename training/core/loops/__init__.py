"""Training loops, each readable top to bottom and reporting through callbacks.

``pretrain.train(cfg: PretrainConfig, callbacks) -> summary`` is the pretraining loop; the
post-training loops have the same signature: ``sft`` (SFTConfig), ``reward`` (RewardConfig),
``dpo`` (DPOConfig) and ``ppo`` (PPOConfig).
"""
