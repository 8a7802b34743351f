"""Figure 6 (predicted labels of CE, L2 and LGM heads on a random 2-D plane through a test feature) and
the feature-noise figure (test accuracy against the σ of noise added to the features)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from noisylm.plotting import figure_row, save_png
from noisylm.probing.protocol.baseline import LOGREG_LABEL
from noisylm.probing.protocol.config import HEAD_LABELS, LOSS_LABELS, ProbeConfig
from noisylm.probing.protocol.data import ProbeData
from noisylm.probing.protocol.training import RunSpec, accuracy, run_ids, train_head


def figure6(
    data: ProbeData,
    config: ProbeConfig,
    rows: list[dict[str, Any]],
    device: torch.device,
    path: Path,
    records: list[dict[str, Any]] | None = None,
    resolution: int = 121,
    init_state: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Figure 6: predicted labels of heads trained with CE, L2 (‖g(t) − g(t̂)‖₂) and LGM on a random
    2-D plane through one test feature (the MLP head when probed, else the first head kind);
    green = the correct label. Returns the fraction of the plane
    each head labels correctly (a larger correct region = less sensitive to input perturbations).
    The heads start from ``init_state`` when given and use ``config.anchor_weight``, like the probe's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    head_kind = "mlp" if "mlp" in config.heads else config.heads[0]
    recipe = config.recipe(head_kind)
    index = {
        (r["head"], r["loss"]): r
        for r in rows
        if (r["backbone"], r["dataset"]) == (data.backbone, data.dataset)
    }
    base = index.get((head_kind, "lgm")) or index.get((head_kind, "ce")) or {}
    lr = base.get("lr", recipe.lrs[0])
    batch_size = base.get("batch_size", recipe.batch_sizes[0])
    gamma = base.get("gamma") or config.gammas[0]
    lam = base.get("lam") or config.lams[0]
    heads = {}
    for loss, title in (
        ("ce", "(a) CE, no regulariser"),
        ("l2-output", "(b) CE + L2"),
        ("lgm", "(c) CE + L_gm"),
    ):
        row = index.get((head_kind, loss), {})
        spec = RunSpec(
            head_kind,
            loss,
            row.get("lr", lr),
            row.get("batch_size", batch_size),
            0.0 if loss == "ce" else (row.get("gamma") or gamma),
            0.0 if loss == "ce" else (row.get("lam") or lam),
            0,
            config.anchor_weight,
            "absolute"
            if loss == "ce"
            else (row.get("gamma_scale") or base.get("gamma_scale") or config.gamma_scales[0]),
        )
        head, _ = train_head(data, spec, recipe, device, init_state)
        heads[title] = head
        if records is not None:
            records.append(
                {
                    "phase": "figure6",
                    **run_ids(data, head_kind, loss),
                    **asdict(spec),
                    "init_head": config.init_head,
                    "feature_noise": data.feature_noise,
                    "test_acc": accuracy(head, *data.splits["test"]),
                }
            )

    test_x, test_y = data.splits["test"]
    rng = torch.Generator().manual_seed(0)
    with torch.no_grad():
        correct_all = torch.ones(len(test_y), dtype=torch.bool)
        for head in heads.values():
            correct_all &= head(test_x.to(device)).argmax(1).cpu() == test_y
    candidates = correct_all.nonzero()[:, 0] if correct_all.any() else torch.arange(len(test_y))
    pick = int(candidates[torch.randint(len(candidates), (1,), generator=rng)])
    point, label = test_x[pick], int(test_y[pick])
    # A random plane through the point: two orthonormal Gaussian directions. Its half-width: the
    # smallest of r0·2^k (r0 = distance to the nearest other-class mean) at which the CE head labels at
    # most half of the plane correctly, so that all panels show boundaries at one common scale.
    directions, _ = torch.linalg.qr(torch.randn(point.numel(), 2, generator=rng, dtype=torch.float64))
    directions = directions.float()
    train_x, train_y = data.splits["train"]
    others = [c for c in range(data.num_classes) if c != label and (train_y == c).any()]
    means = torch.stack([train_x[train_y == c].mean(0) for c in others]) if others else point[None] * 2
    base_radius = float((means - point).norm(dim=1).min()) or 1.0

    def plane(radius: float) -> torch.Tensor:
        steps = torch.linspace(-radius, radius, resolution)
        a, b = torch.meshgrid(steps, steps, indexing="xy")
        return point + a.reshape(-1, 1) * directions[:, 0] + b.reshape(-1, 1) * directions[:, 1]

    ce_head = next(iter(heads.values()))
    for k in range(12):
        radius = base_radius * 2**k
        with torch.no_grad():
            if (ce_head(plane(radius).to(device)).argmax(1).cpu() == label).float().mean() <= 0.5:
                break
    grid = plane(radius)

    palette = [c for i, c in enumerate(plt.get_cmap("tab20").colors) if i not in (4, 5)]  # no greens
    colors = [palette[c % len(palette)] for c in range(data.num_classes)]
    colors[label] = (0.1, 0.65, 0.2)
    fig, axes = plt.subplots(1, len(heads), figsize=(4.2 * len(heads), 4.2), constrained_layout=True)
    stats: dict[str, Any] = {
        "head": head_kind,
        "test_index": pick,
        "label": data.class_names[label] if label < len(data.class_names) else label,
        "radius": radius,
        "correct_fraction": {},
    }
    for ax, (title, head) in zip(axes, heads.items(), strict=True):
        with torch.no_grad():
            pred = head(grid.to(device)).argmax(1).cpu().reshape(resolution, resolution)
        fraction = float((pred == label).float().mean())
        stats["correct_fraction"][title] = round(fraction, 4)
        ax.imshow(
            pred.numpy(),
            origin="lower",
            extent=(-radius, radius, -radius, radius),
            cmap=ListedColormap(colors),
            vmin=-0.5,
            vmax=data.num_classes - 0.5,
            interpolation="nearest",
        )
        ax.plot([0], [0], marker="*", color="black", markersize=12)
        ax.set_title(f"{title}\ncorrect region {100 * fraction:.1f}%", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        f"Figure 6: predictions on a random 2-D plane around test example {pick} "
        f"({data.backbone} / {data.dataset}, {head_kind} head; green = correct label)",
        fontsize=10,
    )
    save_png(fig, path, dpi=110)
    plt.close(fig)
    return stats


def feature_noise_figure(curves: list[dict[str, Any]], path: Path) -> None:
    """Test accuracy against feature noise σ: a panel per (backbone, dataset, head), a line per loss
    with its t-based 95% interval over seeds (shaded), the logistic regression dashed."""
    panels: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for curve in curves:
        panels.setdefault((curve["backbone"], curve["dataset"], curve["head"]), []).append(curve)
    fig, axes = figure_row(len(panels), width=4.6, height=3.6)
    for ax, ((backbone, dataset, head), lines) in zip(axes, panels.items(), strict=True):
        for curve in lines:
            sigma, mean = curve["sigma"], curve["mean"]
            if curve["loss"] == "logreg":
                ax.plot(sigma, mean, linestyle="--", color="0.4", marker=".", label=LOGREG_LABEL)
                continue
            label = "CE" + LOSS_LABELS[curve["loss"]] if curve["loss"] != "ce" else "CE"
            (line,) = ax.plot(sigma, mean, marker="o", markersize=3, label=label)
            bands = [(s, i) for s, i in zip(sigma, curve["ci95"], strict=True) if i is not None]
            if bands:
                ax.fill_between(
                    [s for s, _ in bands], [i[0] for _, i in bands], [i[1] for _, i in bands],
                    color=line.get_color(), alpha=0.2, linewidth=0,
                )  # fmt: skip
        ax.set_title(f"{backbone} / {dataset} / {HEAD_LABELS[head]}", fontsize=10)
        ax.set_xlabel("feature noise σ (× per-dimension std of train)")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Test accuracy against feature noise: mean and 95% interval over seeds", fontsize=10)
    save_png(fig, path)
