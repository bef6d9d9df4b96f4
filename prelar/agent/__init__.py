"""Fine-tuning and behaviour learning on Meta-world: replay, intrinsic bonus, action encoder, actor-critic,
the fine-tuned world model of every method, and the online loop (`prelar finetune`)."""
