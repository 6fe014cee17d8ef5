"""``gwi train``: one training loop for every model, every platform, one GPU or many.

The loop is deliberately plain (nanoGPT-style): DDP is detected from ``RANK`` (torchrun), rank 0 alone
writes; one autocast context; a GradScaler that is enabled only for fp16. :mod:`.loop` holds
:func:`train` and its phases; the pieces it puts together:

* :mod:`.data`: the dataset pulled and split, each epoch's order, the batch reader and loader, the flips;
* :mod:`.optim`: the optimisers (AdamW, or Muon + AdamW), the lr schedule, the EMA, the losses;
* :mod:`.state`: what the phases share (the training state, a time budget's clock), RNG states;
* :mod:`.validation`: the validation MAE;
* :mod:`.distributed`, :mod:`.precision`: DDP set-up; the precision and its autocast context.
"""

from .loop import Stopped, train

__all__ = ["Stopped", "train"]
