"""A small PyTorch multilayer perceptron behind the scikit-learn classifier interface.

``torch`` is imported inside functions only, so ``import lsm.models`` and
``lsm --help`` stay fast.  The network is a plain :class:`torch.nn.Sequential`
(``Linear -> ReLU -> Dropout`` per hidden layer, then ``Linear(., 1)``), so a
fitted model pickles and deep-copies without any custom class.

Inputs are centred and scaled inside the model (``input_mean_``,
``input_scale_``).  The design matrix is normally standardised upstream, in
which case this is close to a no-op; it keeps raw tables (as sent by
scikit-learn's checks, or by a user) well conditioned.  The transfer stages
in :mod:`lsm.transfer.mlp` rely on the two arrays being the model's only
preprocessing.

Example
-------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> X = rng.normal(size=(200, 4)); y = (X[:, 0] + X[:, 1] > 0).astype(int)
>>> model = MLPModel(hidden_layer_sizes=(16,), max_epochs=30).fit(X, y)
>>> model.predict_proba(X[:3]).shape
(3, 2)
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from contextlib import contextmanager
from numbers import Integral, Real
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_is_fitted, validate_data

from lsm.errors import ArtifactError
from lsm.io.artifacts import atomic_write_bytes
from lsm.io.values import finite_array, number
from lsm.models.base import META, LsmClassifier, check_weights, first_line, register

if TYPE_CHECKING:
    import torch
    from sklearn.utils import Tags

WEIGHTS_FILE = "mlp.pt"
META_FILE = META
_DEVICES = ("auto", "cpu", "cuda")
# Below this many validation rows early stopping is noise; train for max_epochs instead.
_MIN_VALIDATION = 20
_PREDICT_BATCH = 65_536
# Input scales below this are taken as a constant column (scale 1).
_MIN_SCALE = 1e-12


def resolve_device(device: str, *, strict: bool = True) -> torch.device:
    """Turn the ``device`` parameter into a :class:`torch.device`.

    ``"auto"`` picks CUDA when it is available.  ``"cuda"`` (or ``"cuda:N"``)
    without CUDA raises :class:`ValueError` when ``strict``, else falls back to
    the CPU (used when loading a model saved on a GPU machine).
    """
    import torch

    if not isinstance(device, str) or not (device in _DEVICES or device.startswith("cuda:")):
        raise ValueError(f"device={device!r}: choose 'auto', 'cpu' or 'cuda'")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        if strict:
            raise ValueError(f"device={device!r} but CUDA is not available to torch "
                             f"{torch.__version__} (CPU-only build or no GPU visible); "
                             "use device='auto' or device='cpu'")
        return torch.device("cpu")
    return torch.device(device)


def build_net(n_features: int, hidden_layer_sizes: tuple[int, ...],
              dropout: float) -> torch.nn.Sequential:
    """The network: ``[Linear, ReLU, Dropout] * len(hidden) + [Linear(., 1)]``.

    Dropout layers are kept even at ``p=0`` so that ``state_dict`` keys do not
    depend on the dropout rate.  The last module is always the output layer.
    """
    from torch import nn

    layers: list[nn.Module] = []
    width = n_features
    for size in hidden_layer_sizes:
        layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
        width = size
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


@contextmanager
def training_threads(device: torch.device) -> Iterator[None]:
    """Train on one CPU thread, restoring torch's thread count afterwards.

    A 64-32 MLP on 256-row batches gains nothing from intra-op threads, and when
    other processes load the cores OpenMP's spinning made steps ~25x slower in
    our measurements (1 ms vs 28 ms on two busy cores).  One thread also keeps
    CPU results independent of the machine's core count.
    """
    import torch

    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@register
class MLPModel(LsmClassifier):
    """Binary landslide classifier: a PyTorch MLP trained with Adam and early stopping.

    Parameters
    ----------
    hidden_layer_sizes : tuple of int, default=(64, 32)
        Width of each hidden layer; ``()`` gives logistic regression.
    dropout : float, default=0.1
        Dropout rate after each hidden activation, in ``[0, 1)``.
    learning_rate : float, default=1e-3
        Adam step size.
    weight_decay : float, default=1e-4
        Adam L2 penalty.
    batch_size : int, default=256
        Mini-batch size (the last batch of an epoch may be smaller).
    max_epochs : int, default=200
        Upper bound on passes over the training rows.
    patience : int, default=20
        Epochs without a lower validation loss before training stops; the
        weights of the best epoch are kept.
    validation_fraction : float, default=0.15
        Share of rows held out (stratified) for early stopping.  With ``0``,
        or fewer than 20 validation rows or 2 rows of a class, early stopping
        is off and training runs for ``max_epochs``.
    device : {"auto", "cpu", "cuda"}, default="auto"
        Where to train and predict; ``"auto"`` uses CUDA when available.
    mixed_precision : bool, default=True
        Train under autocast (bf16, or fp16 with gradient scaling) on CUDA;
        ignored on the CPU.  Predictions are always computed in float32.
    random_state : int, RandomState or None, default=0
        Seeds weight initialisation, dropout, shuffling and the validation
        split.  With a fixed seed, fits on the CPU are reproducible.
    verbose : bool, default=False
        Print the losses of each epoch.

    Attributes
    ----------
    classes_ : ndarray of shape (2,)
    n_features_in_ : int
    feature_names_in_ : ndarray of str, only when fitted on a DataFrame
    input_mean_, input_scale_ : ndarray of shape (n_features_in_,)
        Centring and scaling applied before the network.
    net_ : torch.nn.Sequential
        The trained network (in eval mode).
    n_iter_ : int
        Epochs run.
    best_epoch_ : int
        Epoch (1-based) whose weights were kept.
    loss_curve_, validation_loss_curve_ : list of float
        Mean training / validation loss per epoch (the latter empty without
        early stopping).
    """

    family = "mlp"
    label = "MLP"
    short_label = "MLP"
    order = 40
    shap_explainer = "deep"
    artifacts = (WEIGHTS_FILE,)
    #: Stage-2 options tried by ``--anchor auto``, strong anchoring first; weak settings
    #: also get the optimisation budget to move away from the source.
    anchor_grid = ({"alpha": 100.0}, {"alpha": 10.0, "lr": 1e-3},
                   {"alpha": 1.0, "lr": 3e-3, "epochs": 200})

    _parameter_constraints = {
        "hidden_layer_sizes": ["array-like"],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "patience": [Interval(Integral, 1, None, closed="left")],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "device": [str],
        "mixed_precision": ["boolean"],
        "random_state": ["random_state"],
        "verbose": ["boolean"],
    }

    @classmethod
    def param_problem(cls, name: str, value: Any) -> str | None:
        """The constraints, and: ``hidden_layer_sizes`` entries are ints >= 1; ``device``
        is auto, cpu, cuda or cuda:N."""
        problem = super().param_problem(name, value)
        if problem is None and name == "hidden_layer_sizes":
            sizes = list(value)
            if not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1
                       for s in sizes):
                return "must be a list of layer widths, each an int >= 1"
        if problem is None and name == "device" and not (
                value in _DEVICES or str(value).startswith("cuda:")):
            return f"must be one of {', '.join(_DEVICES)} or cuda:N"
        return problem

    def __init__(self, *, hidden_layer_sizes: tuple[int, ...] = (64, 32), dropout: float = 0.1,
                 learning_rate: float = 1e-3, weight_decay: float = 1e-4, batch_size: int = 256,
                 max_epochs: int = 200, patience: int = 20, validation_fraction: float = 0.15,
                 device: str = "auto", mixed_precision: bool = True,
                 random_state: int | np.random.RandomState | None = 0,
                 verbose: bool = False) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.dropout = dropout
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.device = device
        self.mixed_precision = mixed_precision
        self.random_state = random_state
        self.verbose = verbose

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        return tags

    # ------------------------------------------------------------------ checks
    def _layer_sizes(self) -> tuple[int, ...]:
        sizes = tuple(self.hidden_layer_sizes)
        if not all(isinstance(s, (int, np.integer)) and s > 0 for s in sizes):
            raise ValueError(f"hidden_layer_sizes={self.hidden_layer_sizes!r}: "
                             "expected a tuple of positive ints")
        return tuple(int(s) for s in sizes)

    def _check_params(self) -> None:
        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected {what}")

        self._layer_sizes()
        need(0 <= self.dropout < 1, "dropout", "a float in [0, 1)")
        need(self.learning_rate > 0, "learning_rate", "a positive float")
        need(self.weight_decay >= 0, "weight_decay", "a float >= 0")
        need(int(self.batch_size) == self.batch_size >= 1, "batch_size", "an int >= 1")
        need(int(self.max_epochs) == self.max_epochs >= 1, "max_epochs", "an int >= 1")
        need(int(self.patience) == self.patience >= 1, "patience", "an int >= 1")
        need(0 <= self.validation_fraction < 1, "validation_fraction", "a float in [0, 1)")

    def _binary_targets(self, y: np.ndarray) -> np.ndarray:
        """Set ``classes_`` and return ``y`` coded 0/1 (1 = ``classes_[1]``)."""
        check_classification_targets(y)
        y_type = type_of_target(y, input_name="y", raise_unknown=True)
        if y_type != "binary":
            raise ValueError("Only binary classification is supported. The type of the target "
                             f"is {y_type}.")
        classes, y01 = np.unique(y, return_inverse=True)
        if len(classes) != 2:
            raise ValueError(f"{type(self).__name__} needs samples of 2 classes; y has 1 class "
                             f"({classes[0]!r})")
        self.classes_ = classes
        return y01.astype(np.float32)

    # ------------------------------------------------------------------ fit
    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> MLPModel:
        """Train on ``X`` (n_samples, n_features) and binary labels ``y``.

        ``sample_weight`` weighs each row's cross-entropy, in training and in the
        early-stopping validation loss, and the input centring/scaling; a row of
        weight 0 has no influence.  Mini-batches are drawn over rows, so integer
        weights only approximate repeated rows.
        """
        import torch

        X, y = validate_data(self, X, y, dtype=np.float64)
        w = check_weights(sample_weight, X)
        self._check_params()
        y01 = self._binary_targets(y)
        device = resolve_device(self.device)

        if w is None:
            mean = X.mean(axis=0)
            scale = X.std(axis=0)
        else:
            mean = np.average(X, axis=0, weights=w)
            scale = np.sqrt(np.average((X - mean) ** 2, axis=0, weights=w))
        # Constant columns: leave them centred at 0 instead of dividing by ~0.
        scale[scale < _MIN_SCALE] = 1.0
        self.input_mean_, self.input_scale_ = mean, scale

        rng = check_random_state(self.random_state)
        seed = int(rng.randint(np.iinfo(np.int32).max))
        idx_tr, idx_va = self._split(y01, seed, w)

        fork = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=fork), training_threads(device):
            torch.manual_seed(seed)
            self._train(self._scaled(X), y01, idx_tr, idx_va, device, seed, w)
        return self

    def _split(self, y01: np.ndarray, seed: int,
               w: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        n = len(y01)
        idx = np.arange(n)
        n_val = int(math.ceil(n * self.validation_fraction))
        counts = np.bincount(y01.astype(np.intp), minlength=2)
        if n_val < _MIN_VALIDATION or counts.min() < 2 or n - n_val < 2:
            return idx, idx[:0]
        idx_tr, idx_va = train_test_split(idx, test_size=n_val, stratify=y01, random_state=seed)
        if w is not None and (w[idx_va].sum() <= 0 or w[idx_tr].sum() <= 0):
            return idx, idx[:0]  # a weightless side: no early stopping rather than 0/0
        return np.sort(idx_tr), np.sort(idx_va)

    def _train(self, Xs: np.ndarray, y01: np.ndarray, idx_tr: np.ndarray, idx_va: np.ndarray,
               device: torch.device, seed: int, w: np.ndarray | None = None) -> None:
        import torch

        net = build_net(Xs.shape[1], self._layer_sizes(), float(self.dropout)).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=float(self.learning_rate),
                               weight_decay=float(self.weight_decay))
        loss_fn = torch.nn.BCEWithLogitsLoss()
        row_loss = torch.nn.BCEWithLogitsLoss(reduction="none")
        use_amp = bool(self.mixed_precision) and device.type == "cuda"
        amp_dtype = torch.bfloat16
        if use_amp and not torch.cuda.is_bf16_supported():
            amp_dtype = torch.float16
        grad_scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

        Xt = torch.from_numpy(Xs).to(device)
        yt = torch.from_numpy(y01).to(device)
        tr = torch.from_numpy(idx_tr).to(device)
        va = torch.from_numpy(idx_va).to(device)
        n_tr, bs = len(idx_tr), int(self.batch_size)
        # Weights scaled to mean 1 over the training rows: a batch's mean weighted loss
        # is then an unbiased estimate of the weighted mean loss, whatever the weights' scale.
        wt = None if w is None else torch.from_numpy(
            (w / w[idx_tr].mean()).astype(np.float32)).to(device)

        def batch_loss(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            if wt is None:
                return loss_fn(logits, yt[rows])
            return (row_loss(logits, yt[rows]) * wt[rows]).mean()
        gen = torch.Generator().manual_seed(seed)

        best_loss, best_epoch, best_state = math.inf, 0, None
        self.loss_curve_: list[float] = []
        self.validation_loss_curve_: list[float] = []
        epoch = 0
        for epoch in range(1, int(self.max_epochs) + 1):
            net.train()
            order = tr[torch.randperm(n_tr, generator=gen).to(device)]
            total = torch.zeros((), device=device)
            for start in range(0, n_tr, bs):
                rows = order[start:start + bs]
                opt.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                    logits = net(Xt[rows]).squeeze(1)
                loss = batch_loss(logits.float(), rows)
                grad_scaler.scale(loss).backward()
                grad_scaler.step(opt)
                grad_scaler.update()
                total += loss.detach() * len(rows)
            self.loss_curve_.append(float(total) / n_tr)

            if len(idx_va) == 0:
                continue
            net.eval()
            with torch.no_grad():
                if wt is None:
                    val = float(loss_fn(net(Xt[va]).squeeze(1), yt[va]))
                else:
                    val = float((row_loss(net(Xt[va]).squeeze(1), yt[va]) * wt[va]).sum()
                                / wt[va].sum())
            self.validation_loss_curve_.append(val)
            if self.verbose:
                print(f"epoch {epoch}: train loss {self.loss_curve_[-1]:.5f}, "
                      f"validation loss {val:.5f}", flush=True)
            if val < best_loss - 1e-6:
                best_loss, best_epoch = val, epoch
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            elif epoch - best_epoch >= int(self.patience):
                break

        if best_state is not None:
            net.load_state_dict(best_state)
        else:
            best_epoch = epoch
        net.eval()
        self.net_ = net
        self.n_iter_ = epoch
        self.best_epoch_ = best_epoch

    # ------------------------------------------------------------------ predict
    def _scaled(self, X: np.ndarray) -> np.ndarray:
        """Apply the fitted centring/scaling; float32, C-contiguous, writable."""
        return np.ascontiguousarray((X - self.input_mean_) / self.input_scale_, dtype=np.float32)

    def _device_of_net(self) -> torch.device:
        return next(self.net_.parameters()).device

    def predict_proba(self, X: Any) -> np.ndarray:
        """Probabilities of ``classes_``: array of shape (n_samples, 2)."""
        import torch

        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        net, device = self.net_, self._device_of_net()
        net.eval()
        logits = np.empty(X.shape[0], dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, X.shape[0], _PREDICT_BATCH):
                xb = torch.from_numpy(self._scaled(X[start:start + _PREDICT_BATCH])).to(device)
                logits[start:start + len(xb)] = net(xb).squeeze(1).float().cpu().numpy()
        p1 = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
        return np.column_stack([1.0 - p1, p1])

    # ------------------------------------------------------------------ artifacts
    def _save_payload(self, directory: Path, meta: dict[str, Any]) -> list[Path]:
        """``mlp.pt``: the network's ``state_dict``; the input scaling goes in ``meta.json``."""
        import torch

        buf = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in self.net_.state_dict().items()}, buf)
        atomic_write_bytes(directory / WEIGHTS_FILE, buf.getvalue())
        meta.update({
            "hidden_layer_sizes": list(self._layer_sizes()),
            "input_mean": self.input_mean_.tolist(),
            "input_scale": self.input_scale_.tolist(),
            "n_iter": int(getattr(self, "n_iter_", 0)),
            "best_epoch": int(getattr(self, "best_epoch_", 0)),
            "torch_version": torch.__version__,
        })
        return [directory / WEIGHTS_FILE]

    def _load_payload(self, directory: Path, meta: dict[str, Any]) -> None:
        """Read ``mlp.pt`` with ``torch.load(weights_only=True)`` into a fresh network."""
        import torch

        n_features = self.n_features_in_
        try:
            sizes = self._layer_sizes()
            if list(sizes) != list(meta["hidden_layer_sizes"]):
                raise ValueError("hidden_layer_sizes differ from the parameters'")
            mean = np.asarray(meta["input_mean"], dtype=np.float64)
            scale = np.asarray(meta["input_scale"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as err:
            raise ArtifactError(f"{directory / META_FILE}: incomplete or invalid "
                                f"({type(err).__name__}: {err})") from None
        if mean.shape != (n_features,) or scale.shape != (n_features,) or \
                len(self.classes_) != 2:
            raise ArtifactError(f"{directory / META_FILE}: scaler arrays or classes do not match "
                                f"n_features={n_features}")
        finite_array(mean, f"{directory / META_FILE}: input_mean")
        finite_array(scale, f"{directory / META_FILE}: input_scale")
        # fit never writes a scale below _MIN_SCALE (it uses 1 instead); inputs are scaled
        # into float32, so the centre must fit in float32 too
        bad = np.flatnonzero(~((scale >= _MIN_SCALE) & (scale < 1e30)))
        if bad.size:
            raise ArtifactError(f"{directory / META_FILE}: input_scale[{bad[0]}]: "
                                f"{scale[bad[0]]!r} is outside [{_MIN_SCALE}, 1e30)")
        bad = np.flatnonzero(np.abs(mean) >= 1e30)
        if bad.size:
            raise ArtifactError(f"{directory / META_FILE}: input_mean[{bad[0]}]: "
                                f"{mean[bad[0]]!r} is outside (-1e30, 1e30)")
        weights = directory / WEIGHTS_FILE
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise ArtifactError(f"{weights}: missing") from None
        except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
            raise ArtifactError(f"{weights}: unreadable torch state_dict "
                                f"({type(err).__name__}: {first_line(err)})") from None
        if not isinstance(state, dict):
            raise ArtifactError(f"{weights}: holds a {type(state).__name__}, not a state_dict")
        for key, t in state.items():
            if not isinstance(t, torch.Tensor) or not t.is_floating_point():
                what = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
                raise ArtifactError(f"{weights}: {key}: {what} where the network has float "
                                    "weights")
            if not bool(torch.isfinite(t).all()):
                raise ArtifactError(f"{weights}: {key}: holds NaN or infinite weights")
        net = build_net(n_features, sizes, float(self.dropout))
        try:
            net.load_state_dict(state, strict=True)
        except (RuntimeError, TypeError, AttributeError) as err:
            raise ArtifactError(f"{weights}: weights do not fit the network described in "
                                f"{META_FILE} ({first_line(err)})") from None
        net.eval()
        self.net_ = net.to(resolve_device(self.device, strict=False))
        self.input_mean_, self.input_scale_ = mean, scale
        self.n_iter_ = number(meta.get("n_iter", 0), f"{directory / META_FILE}: n_iter", lo=0,
                              integer=True)
        self.best_epoch_ = number(meta.get("best_epoch", 0),
                                  f"{directory / META_FILE}: best_epoch", lo=0, integer=True)
        self.loss_curve_, self.validation_loss_curve_ = [], []

    @classmethod
    def _upgrade_meta(cls, directory: Path, meta: dict[str, Any]) -> dict[str, Any]:
        """Folders written before the shared format name the inputs ``n_features`` and
        ``feature_names``."""
        meta = dict(meta)
        for old, new in (("n_features", "n_features_in"), ("feature_names", "feature_names_in")):
            if new not in meta and old in meta:
                meta[new] = meta.pop(old)
        return meta
