"""The warm-up demo: Post-LN needs a learning-rate warm-up, Pre-LN does not.

Trains the Post-LN and Pre-LN encoders on a synthetic sequence-labelling task with
optax (:mod:`normtheory.warmup.train`) and draws the outcome
(:mod:`normtheory.warmup.plot`); ``experiments/warmup.py`` is the command line.

Example:
  >>> from normtheory import warmup
  >>> task = warmup.Task("sort", vocab=8, n=4, n_train=64, n_val=16)
  >>> cfg = warmup.model_config("post", 2, 16, task)
  >>> frame = warmup.train(cfg, warmup.Setting("adam", 0, 1e-3), warmup.make_data(task),
  ...                      seeds=[0], steps=4, eval_every=2, progress=False)
  >>> sorted(frame.metric.unique())
  ['grad_norm_W2', 'train_loss', 'val_acc', 'val_loss']

References:
  Xiong et al. 2020, "On Layer Normalization in the Transformer Architecture",
    Section 3 and Fig. 2.
"""

from normtheory.warmup.plot import fig_warmup, final_metrics, setting_label
from normtheory.warmup.train import (
    COLUMNS,
    METRICS,
    OPTIMIZERS,
    TASKS,
    ChunkResult,
    Dataset,
    EncoderParams,
    LossAndAccuracy,
    RunKeys,
    Runner,
    Setting,
    Task,
    TrainState,
    apply,
    encode,
    init_and_data_keys,
    init_params,
    labels,
    loss_and_accuracy,
    lr_schedule,
    make_data,
    make_runner,
    model_config,
    optimizer,
    sinusoidal_positions,
    sweep,
    train,
)

__all__ = [
    "COLUMNS",
    "METRICS",
    "OPTIMIZERS",
    "TASKS",
    "ChunkResult",
    "Dataset",
    "EncoderParams",
    "LossAndAccuracy",
    "RunKeys",
    "Runner",
    "Setting",
    "Task",
    "TrainState",
    "apply",
    "encode",
    "fig_warmup",
    "final_metrics",
    "init_and_data_keys",
    "init_params",
    "labels",
    "loss_and_accuracy",
    "lr_schedule",
    "make_data",
    "make_runner",
    "model_config",
    "optimizer",
    "setting_label",
    "sinusoidal_positions",
    "sweep",
    "train",
]
