"""The two-head network: failure probability within the horizon and remaining-life fraction.

Training uses a model with two named outputs (one loss each); the model that ships is an
inference model over the same layers whose single output is concat([probability,
rul_fraction]) of shape (batch, 2), the layout the manifest's `outputs` field describes.

Two bodies share the heads. The default is a temporal CNN (stacked 1-D convolutions over the
window, then a dense layer): on C-MAPSS it is as accurate as the LSTM, trains in a fraction of
the time and, having no recurrent state, quantizes to full int8 within the parity gate. The
LSTM body stays available (`arch="lstm"`); its layers are unrolled, as a looped LSTM does not
convert to TFLite with an unfixed batch.

With `members` > 0 (the recipe) the shipped model wraps several such inference models and
outputs their mean, with the same input and output layout.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np

from converter.data import Windows
from converter.recipe import ModelConfig

PROBABILITY, RUL_FRACTION = "probability", "rul_fraction"
SHIPPED = "pdm_model"  # the name of the model a bundle ships


CELL_STATE = "cell_state"


def _cnn_body(inputs: keras.KerasTensor, cfg: ModelConfig) -> keras.KerasTensor:
    """Stacked same-padded convolutions keep the window's time axis, so the flattened
    features still say *when* in the window a change happened (the slope matters for RUL)."""
    x = inputs
    for i in range(cfg.conv_layers):
        kernel = cfg.kernel if i < cfg.conv_layers - 1 else 3
        x = keras.layers.Conv1D(cfg.filters, kernel, padding="same", activation="relu",
                                name=f"conv_{i + 1}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dropout(cfg.dropout, name="dropout_1")(x)
    return keras.layers.Dense(cfg.dense, activation="relu", name="dense")(x)


def _lstm_body(inputs: keras.KerasTensor,
               cfg: ModelConfig) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """Two unrolled LSTMs; also returns both final cell states (for the cell penalty)."""
    x, _, c1 = keras.layers.LSTM(cfg.lstm1, return_sequences=True, return_state=True,
                                 unroll=True, name="lstm_1")(inputs)
    if cfg.hidden_noise:
        x = keras.layers.GaussianNoise(cfg.hidden_noise, name="noise_1")(x)
    x = keras.layers.Dropout(cfg.dropout, name="dropout_1")(x)
    x, _, c2 = keras.layers.LSTM(cfg.lstm2, return_state=True, unroll=True, name="lstm_2")(x)
    if cfg.hidden_noise:
        x = keras.layers.GaussianNoise(cfg.hidden_noise, name="noise_2")(x)
    x = keras.layers.Dropout(cfg.dropout, name="dropout_2")(x)
    return x, keras.layers.Concatenate(name=CELL_STATE)([c1, c2])


def build_training_model(window: int, n_features: int, cfg: ModelConfig) -> keras.Model:
    inputs = keras.Input(shape=(window, n_features), name="window")
    extra = {}
    x = inputs
    if cfg.input_noise:
        # active only in training: the inference model and its TFLite conversions skip it
        x = keras.layers.GaussianNoise(cfg.input_noise, name="input_noise")(x)
    if cfg.arch == "lstm":
        x, extra[CELL_STATE] = _lstm_body(x, cfg)
    else:
        x = _cnn_body(x, cfg)
    probability = keras.layers.Dense(1, activation="sigmoid", name=PROBABILITY)(x)
    rul = keras.layers.Dense(1, activation="sigmoid", name=RUL_FRACTION)(x)
    return keras.Model(inputs, {PROBABILITY: probability, RUL_FRACTION: rul, **extra},
                       name=f"pdm_{cfg.arch}_train")


def _cell_excess(margin: float):
    """Loss on the final LSTM cell states beyond +-margin: keeps the int8 range of the cell
    state (one scale per tensor) narrow, so small cell values keep their resolution."""

    def cell_excess(_unused, cells):
        return keras.ops.mean(keras.ops.square(keras.ops.relu(keras.ops.abs(cells) - margin)),
                              axis=-1)

    return cell_excess


def inference_model(trained: keras.Model, name: str = SHIPPED) -> keras.Model:
    """The shipped model: the trained layers, one (batch, 2) output."""
    outputs = [trained.get_layer(PROBABILITY).output, trained.get_layer(RUL_FRACTION).output]
    joined = keras.layers.Concatenate(axis=-1, name="outputs")(outputs)
    # `input`, not `inputs`: the one input tensor, not a list of one, so that a window batch
    # is the structure the model expects (a list makes Keras warn on every call)
    return keras.Model(trained.input, joined, name=name)


@dataclass
class TrainResult:
    model: keras.Model           # inference model, output (batch, 2)
    history: dict[str, list[float]]  # of the early-stopped fit, validation curves included
    best_epoch: int
    seconds: float
    members: int = 0             # models averaged into `model` (0: the early-stopped one)


FitCallbacks = Callable[[str, int], list[keras.callbacks.Callback]]


def _compiled(n_features: int, window: int, cfg: ModelConfig) -> keras.Model:
    model = build_training_model(window, n_features, cfg)
    losses = {PROBABILITY: keras.losses.BinaryCrossentropy(label_smoothing=cfg.label_smoothing),
              RUL_FRACTION: "mse"}
    weights = {PROBABILITY: 1.0, RUL_FRACTION: cfg.rul_loss_weight}
    if cfg.arch == "lstm":
        losses[CELL_STATE] = _cell_excess(cfg.cell_margin)
        weights[CELL_STATE] = cfg.cell_penalty
    model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss=losses,
                  loss_weights=weights)
    return model


def _targets(w: Windows, horizon: int, rul_cap: float, cfg: ModelConfig) -> dict[str, np.ndarray]:
    out = {PROBABILITY: w.labels(horizon)[:, None], RUL_FRACTION: w.rul_fraction(rul_cap)[:, None]}
    if cfg.arch == "lstm":
        out[CELL_STATE] = np.zeros((len(w), 1), np.float32)
    return out


def average_model(members: list[keras.Model]) -> keras.Model:
    """One model whose output is the mean of the members' outputs: the edge and the cloud run
    it as they run a single network (one TFLite file, one `predict`)."""
    inputs = keras.Input(shape=members[0].input.shape[1:], name="window")
    outputs = [m(inputs) for m in members]
    return keras.Model(inputs, keras.layers.Average(name="outputs_mean")(outputs),
                       name=SHIPPED)


def train(train: Windows, val: Windows, horizon: int, rul_cap: float, cfg: ModelConfig,
          seed: int = 0, verbose: int = 2, fit_callbacks: FitCallbacks | None = None,
          ) -> TrainResult:
    """Early stopping on the held-out assets picks the epoch count and the learning-rate
    schedule; with `cfg.members` > 0 that many models are then trained on every training asset
    (held-out ones included) with that schedule and averaged. The refit uses the fifth of the
    fleet the validation split kept out, and the average evens out the initialisations: on
    C-MAPSS FD001 the split alone moved a single model's RUL error by up to 1.8 cycles."""
    callbacks_for = fit_callbacks or (lambda label, epochs: [])
    keras.utils.set_random_seed(seed)
    window, n_features = train.x.shape[1:]
    model = _compiled(n_features, window, cfg)
    stop = [keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.patience,
                                          restore_best_weights=True),
            keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5,
                                              patience=cfg.lr_patience)]
    started = time.monotonic()
    fit = model.fit(train.x, _targets(train, horizon, rul_cap, cfg),
                    validation_data=(val.x, _targets(val, horizon, rul_cap, cfg)),
                    epochs=cfg.epochs, batch_size=cfg.batch_size, shuffle=True,
                    callbacks=[*stop, *callbacks_for("training", cfg.epochs)], verbose=verbose)
    history = {k: [float(v) for v in vals] for k, vals in fit.history.items()}
    best = int(np.argmin(history["val_loss"])) + 1 if history.get("val_loss") else len(
        history.get("loss", []))
    if not cfg.members or len(val) == 0:
        return TrainResult(inference_model(model), history, best, time.monotonic() - started)
    # the learning rate of each epoch up to the one kept (ReduceLROnPlateau logs it)
    rates = history.get("learning_rate", [cfg.learning_rate] * best)[:best]
    everything = train.plus(val)
    targets = _targets(everything, horizon, rul_cap, cfg)
    members = []
    for k in range(cfg.members):
        keras.utils.set_random_seed(seed * 100 + k)
        member = _compiled(n_features, window, cfg)
        schedule = keras.callbacks.LearningRateScheduler(
            lambda epoch, _lr: float(rates[min(epoch, len(rates) - 1)]))
        label = f"member {k + 1}/{cfg.members}, all assets"
        member.fit(everything.x, targets, epochs=best,
                   batch_size=cfg.batch_size, shuffle=True,
                   callbacks=[schedule, *callbacks_for(label, best)], verbose=verbose)
        members.append(inference_model(member, name=f"member_{k + 1}"))
    return TrainResult(average_model(members), history, best, time.monotonic() - started,
                       cfg.members)


def predict(model: keras.Model, x: np.ndarray, batch_size: int = 2048) -> np.ndarray:
    """(n, 2) outputs of the float Keras model, in batches."""
    if len(x) == 0:
        return np.empty((0, 2), np.float32)
    # a tensor, not an array: bundles saved before inference_model took `input` expect a list
    # of one input, which Keras fills from a tensor without a warning
    out = [np.asarray(model(keras.ops.convert_to_tensor(x[i:i + batch_size]), training=False))
           for i in range(0, len(x), batch_size)]
    return np.concatenate(out).astype(np.float32)
