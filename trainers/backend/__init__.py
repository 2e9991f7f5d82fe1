"""The only code that touches DeepSpeed and HF model classes: the training engine, model loading (LoRA, critic,
reference), weight naming and sync buckets, the trainer's log-prob forward, and torch.distributed set-up."""
