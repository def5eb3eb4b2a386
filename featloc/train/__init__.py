"""Training: one trainer for every model (`trainer.train`), its step/checkpoint/optimizer
modules, the losses, the data pipeline (`data/`), pseudo-labels (`labels`) and the training
tasks (`tasks/`). Nothing here is needed at inference time."""
