"""What a probe runs: the losses and head kinds, the presets' recipes, and `ProbeConfig`.

Presets (App. E): ``nlu`` = Adam, 10 epochs, lr ∈ {3e-4, 6e-4}, batch ∈ {8, 12, 16, 32};
``vision`` = AdamW, 30 epochs, cosine schedule, linear head lr 0.1 without weight decay, MLP lr 1e-3
with weight decay 1e-4 (the paper gives no batch size; 128 here); ``quick`` = a small grid for demos;
``study`` = ``nlu``'s recipe with 8 seeds (the LGM study's default: enough seeds for the paired
sign-flip test, see `paired`). The others default to 5 seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from noisylm.configs.fields import Check, at_least, one_of, rule, setting, validate
from noisylm.errors import UsageError
from noisylm.probing.heads import HEAD_KINDS
from noisylm.probing.lgm import VARIANTS

# Loss names of the probe: `ce` is plain cross-entropy, the rest are LGM variants added to it.
LOSSES = ("ce",) + tuple(v for v in VARIANTS if v != "none")
LOSS_LABELS = {
    "ce": "",
    "lgm": " + L_gm",
    "norm": " + ‖∇θ ℓ‖₂",
    "cosine": " + (1 − cos)",
    "l2-output": " + L2 (‖g(t) − g(t̂)‖₂)",
}
HEAD_LABELS = {"linear": "Linear", "mlp": "MLP"}
# How γ is read (Eq. 3): `absolute` t̂ = t + γδ; `feature-std` t̂ = t + γ(s ⊙ δ), s = the training split's
# per-dimension std, so that one γ is the same relative perturbation on features of any scale.
GAMMA_SCALES = ("absolute", "feature-std")
# C of the logistic-regression reference (standardised features), chosen on validation.
LOGREG_CS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
PAPER_SENSITIVITY = ((0.001, 0.001), (0.05, 0.05), (0.1, 0.1))  # Table 6


def _grid(name: str) -> Check:
    """A γ or λ grid: one value at least, each finite and >= 0."""
    return rule(
        lambda values: (
            None
            if values and all(v >= 0 and math.isfinite(v) for v in values)
            else f"{name} values must be finite numbers >= 0, got {values}"
        )
    )


@dataclass(frozen=True)
class Recipe:
    """Optimiser and schedule of one head kind under a preset (App. E)."""

    epochs: int
    lrs: tuple[float, ...]
    batch_sizes: tuple[int, ...]
    optimizer: str = "adam"  # adam | adamw
    weight_decay: float = 0.0
    schedule: str = "constant"  # constant | cosine


PRESETS: dict[str, dict[str, Recipe]] = {
    "nlu": {kind: Recipe(epochs=10, lrs=(3e-4, 6e-4), batch_sizes=(8, 12, 16, 32)) for kind in HEAD_KINDS},
    "vision": {
        "linear": Recipe(30, (0.1,), (128,), optimizer="adamw", weight_decay=0.0, schedule="cosine"),
        "mlp": Recipe(30, (1e-3,), (128,), optimizer="adamw", weight_decay=1e-4, schedule="cosine"),
    },
    "quick": {kind: Recipe(epochs=8, lrs=(1e-3, 3e-3), batch_sizes=(32,)) for kind in HEAD_KINDS},
}
PRESETS["study"] = dict(PRESETS["nlu"])
# Seeds per selected setting when `seeds` is not given.
PRESET_SEEDS = {"nlu": 5, "vision": 5, "quick": 5, "study": 8}


@dataclass
class ProbeConfig:
    """What `probe` runs. Every field documents itself (`noisylm.configs.fields.setting`): `noisylm probe
    --help` and the README's probe table show the docs.

    Seed s of every loss starts from the same head weights and sees the same batch order, so the losses
    are compared seed by seed (`paired`). ``jobs`` does not change the results, and a resumed probe may
    use another value.
    """

    heads: tuple[str, ...] = setting(("linear", "mlp"), "head kinds: `linear`, `mlp`")
    losses: tuple[str, ...] = setting(
        ("ce", "lgm"), "`ce` and/or LGM variants added to it: `lgm`, `norm`, `cosine`, `l2-output`"
    )
    preset: str = setting(
        "nlu",
        "`nlu`, `vision`, `quick` or `study`: optimiser, epochs, lr and batch grids (App. E)",
        one_of(PRESETS, lambda value: f"unknown preset {value!r}; choose one of {', '.join(PRESETS)}"),
    )
    epochs: int | None = setting(None, "epochs of every head; none = the preset's", at_least(1))
    lrs: tuple[float, ...] | None = setting(
        None,
        "learning-rate grid of every head; none = the preset's",
        rule(
            lambda lrs: (
                None
                if lrs and all(lr > 0 and math.isfinite(lr) for lr in lrs)
                else f"learning rates must be positive numbers, got {lrs}"
            )
        ),
    )
    batch_sizes: tuple[int, ...] | None = setting(
        None,
        "batch-size grid of every head; none = the preset's",
        rule(lambda sizes: None if sizes and min(sizes) >= 1 else f"batch sizes must be >= 1, got {sizes}"),
    )
    gammas: tuple[float, ...] = setting(
        (0.01,), "γ grid (Eq. 3) searched on validation for penalised losses (paper: 0.01)", _grid("gamma")
    )
    lams: tuple[float, ...] = setting(
        (0.15,), "λ grid (Eq. 6) searched on validation for penalised losses (paper: 0.15)", _grid("lambda")
    )
    anchor_weight: float = setting(
        0.0,
        "α of the L2-SP term (α/2)‖θ − θ₀‖² added to every loss (`ce` included), θ₀ = the head's "
        "initial weights; 0 = off",
    )
    init_head: str | None = setting(
        None,
        "a safetensors file of one head's state_dict that every run starts from (and anchors to) instead "
        "of a seeded random init; needs a single head kind",
    )
    seeds: int | None = setting(
        None,
        "seeds per selected setting (mean ± std over them); none = the preset's: 8 for `study`, else 5",
        at_least(1),
    )
    select_seeds: int = setting(
        1,
        "seeds per grid point during selection, scored by their mean validation accuracy (1 = the paper's "
        "protocol; N costs N times the selection runs and gives a steadier choice on a small val split)",
        Check(">= 1 (seeds per grid point)", lambda value: value >= 1),
    )
    sensitivity: tuple[tuple[float, float], ...] = setting(
        (), "(γ, λ) pairs for Table 6, trained for `lgm` at its selected lr/batch"
    )
    figure6: bool = setting(True, "draw Figure 6 for the first cache and head")
    gamma_scales: tuple[str, ...] = setting(
        ("absolute",),
        "how γ is read: `absolute` t̂ = t + γδ (Eq. 3); `feature-std` t̂ = t + γ(s ⊙ δ), s = the training "
        "split's per-dimension std; several are searched on validation with γ",
    )
    feature_noise: tuple[float, ...] = setting(
        (0.0,),
        "σ values: the probe at each on the features plus Gaussian noise of std σ × the training split's "
        "per-dimension std, drawn once per example; (0.0,) = the features as they are",
    )
    feature_noise_seed: int = setting(0, "seed of the feature-noise draw, the same for every loss and seed")
    logreg: bool = setting(
        True,
        "add a scikit-learn logistic-regression reference (standardised features) to the linear-head columns",
    )
    logreg_cs: tuple[float, ...] = setting(
        LOGREG_CS, "C grid of the logistic-regression reference, chosen on validation"
    )
    device: str = setting(
        "auto",
        "`auto`, `cpu` or `cuda[:N]`",
        rule(
            lambda device: (
                None
                if device in ("auto", "cpu") or device.startswith("cuda")
                else f"unknown device {device!r}; use auto, cpu or cuda[:N]"
            )
        ),
    )
    threads: int | None = setting(
        1,
        "CPU threads while training (heads on batches of 8-128 rows train fastest single-threaded); "
        "none = torch's setting",
        at_least(1),
    )
    jobs: int = setting(
        1,
        "runs trained at once, each in its own worker process with `threads` threads (1 = one after "
        "another in this process); the results do not depend on it",
        Check("an integer >= 1 (runs trained at once)", lambda value: value >= 1),
    )
    progress: bool = setting(True, "tqdm progress bars")

    def __post_init__(self) -> None:
        # Conversions with their own messages first; then `validate` (types and each field's check).
        self.heads, self.losses = tuple(self.heads), tuple(self.losses)
        self.gammas, self.lams = tuple(self.gammas), tuple(self.lams)
        self.gamma_scales = tuple(self.gamma_scales)
        self.sensitivity = tuple((float(g), float(lam)) for g, lam in self.sensitivity)
        _check_choices("head", self.heads, HEAD_KINDS)
        _check_choices("loss", self.losses, LOSSES)
        _check_choices("gamma scale", self.gamma_scales, GAMMA_SCALES)
        if self.seeds is None and self.preset in PRESET_SEEDS:
            self.seeds = PRESET_SEEDS[self.preset]
        self.feature_noise = _finite_values("feature noise σ", self.feature_noise, "0,0.5,1")
        if not self.feature_noise:
            raise UsageError("no feature noise σ given; pass 0 for the features as they are, e.g. 0,0.5,1")
        if len(set(self.feature_noise)) != len(self.feature_noise):
            raise UsageError(f"feature noise σ values repeated in {self.feature_noise}; list each once")
        if isinstance(self.feature_noise_seed, bool) or not isinstance(self.feature_noise_seed, int):
            raise UsageError(f"feature_noise_seed must be an integer, got {self.feature_noise_seed!r}")
        self.logreg_cs = _finite_values("logistic-regression C", self.logreg_cs, "0.01,1,100")
        if self.logreg and (not self.logreg_cs or min(self.logreg_cs) <= 0):
            raise UsageError(f"logistic-regression C values must be > 0, got {self.logreg_cs}")
        try:
            self.anchor_weight = float(self.anchor_weight)
        except (TypeError, ValueError):
            raise UsageError(f"anchor_weight must be a number, got {self.anchor_weight!r}") from None
        if isinstance(self.jobs, bool) or not isinstance(self.jobs, int):
            raise UsageError(f"jobs must be an integer >= 1 (runs trained at once), got {self.jobs!r}")
        validate(self)
        if self.sensitivity and "lgm" not in self.losses:
            raise UsageError("the sensitivity grid (Table 6) varies L_gm; add `lgm` to the losses")
        for gamma, lam in self.sensitivity:
            if not (gamma >= 0 and lam >= 0 and math.isfinite(gamma + lam)):
                raise UsageError(f"sensitivity pairs need finite gamma, lambda >= 0, got ({gamma}, {lam})")
        if not (self.anchor_weight >= 0 and math.isfinite(self.anchor_weight)):
            raise UsageError(
                f"anchor_weight (α of the L2-SP term) must be a finite number >= 0, got {self.anchor_weight}"
            )
        if self.init_head is not None and len(self.heads) != 1:
            raise UsageError(
                f"init_head holds the weights of one head kind but heads are {', '.join(self.heads)}; "
                "probe a single head kind with it (e.g. --heads linear)"
            )

    def recipe(self, head: str) -> Recipe:
        base = PRESETS[self.preset][head]
        return Recipe(
            epochs=self.epochs or base.epochs,
            lrs=self.lrs or base.lrs,
            batch_sizes=self.batch_sizes or base.batch_sizes,
            optimizer=base.optimizer,
            weight_decay=base.weight_decay,
            schedule=base.schedule,
        )


def _finite_values(what: str, values: tuple[float, ...], example: str) -> tuple[float, ...]:
    """``values`` as floats, each finite and >= 0, or one line naming the problem."""
    try:
        numbers = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        shown = ",".join(str(v) for v in values) if isinstance(values, tuple | list) else repr(values)
        raise UsageError(f"{what} values must be numbers such as {example}, got {shown}") from None
    if any(not (v >= 0 and math.isfinite(v)) for v in numbers):
        raise UsageError(f"{what} values must be finite numbers >= 0, got {numbers}")
    return numbers


def _check_choices(what: str, values: tuple[str, ...], allowed: tuple[str, ...]) -> None:
    if not values:
        raise UsageError(f"no {what}s given; choose from {', '.join(allowed)}")
    for value in values:
        if value not in allowed:
            raise UsageError(f"unknown {what} {value!r}; choose from {', '.join(allowed)}")
    if len(set(values)) != len(values):
        raise UsageError(f"{what}s repeated in {values}; list each once")
