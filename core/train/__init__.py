"""Training: methods, optimizers, stages on the Hugging Face Trainer, outputs."""
