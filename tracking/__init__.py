"""Everything that touches MLflow, torch, peft and transformers: the training job, its Trainer callbacks,
the post-run hook that writes the quality analysis to a run, and the ``peft-studio`` CLI."""
