"""fastreg.train: a minimal, readable trainer on NumPy arrays that runs every regularization
step on fastreg's kernels (dropout, batch norm, penalties, proximal L1, fused optimizers),
with early stopping, atomic ``.npz`` checkpoints and exact resume.

    from fastreg.train import Trainer, EarlyStopping, mlp
    model = mlp((64, 256, 256, 10), dropout=0.3, batch_norm=True)
    opt = fastreg.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    trainer = Trainer(model, opt, callbacks=[EarlyStopping(patience=10)], seed=0)
    history = trainer.fit(X, y, validation=(Xv, yv), epochs=100, batch_size=64)

Importing this package imports NumPy and fastreg only (tqdm and matplotlib load on use).
"""
from .callbacks import Callback, EarlyStopping, LRScheduler, ReduceLROnPlateau
from .layers import (BatchNorm, Dropout, Linear, Module, ReLU, Sequential, mlp,
                     softmax_cross_entropy)
from .trainer import Trainer

__all__ = ["Trainer", "Callback", "EarlyStopping", "ReduceLROnPlateau", "LRScheduler", "Module",
           "Linear", "ReLU", "Dropout", "BatchNorm", "Sequential", "mlp", "softmax_cross_entropy"]
