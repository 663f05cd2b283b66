"""PNG plots and a markdown summary of a verified bundle."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from contract.manifest import Manifest  # noqa: E402
from converter.data import failure_label  # noqa: E402
from converter.pipeline import HISTORY  # noqa: E402
from converter.verify import Verification  # noqa: E402


def training_curves(history: dict, best_epoch: int, out: Path) -> Path:
    keys = sorted(k for k in history if not k.startswith("val_") and f"val_{k}" in history)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        epochs = np.arange(1, len(history[key]) + 1)
        ax.plot(epochs, history[key], label="train")
        ax.plot(epochs, history[f"val_{key}"], label="validation")
        ax.axvline(best_epoch, color="grey", ls=":", label=f"kept (epoch {best_epoch})")
        ax.set_title(key)
        ax.set_xlabel("epoch")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "training_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def confusion(v: Verification, out: Path) -> Path:
    m = v.manifest
    truth = failure_label(v.test.scored.rul, m.horizon).astype(bool)
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.6))
    for ax, (name, outputs) in zip(axes, [("float Keras", v.keras_scored),
                                          (f"edge {m.edge.quantization}", v.edge_scored)],
                                   strict=True):
        decided = outputs[:, 0] >= m.thresholds.decision
        cells = np.array([[np.sum(~truth & ~decided), np.sum(~truth & decided)],
                          [np.sum(truth & ~decided), np.sum(truth & decided)]])
        ax.imshow(cells, cmap="Blues")
        for (i, j), n in np.ndenumerate(cells):
            ax.text(j, i, str(n), ha="center", va="center", fontsize=14,
                    color="white" if n > cells.max() / 2 else "black")
        ax.set_xticks([0, 1], ["predicted ok", f"predicted fail\n<= {m.horizon}"])
        ax.set_yticks([0, 1], ["ok", f"fails <= {m.horizon}"])
        ax.set_title(name)
    fig.tight_layout()
    path = out / "confusion.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def rul_per_unit(v: Verification, out: Path) -> Path:
    m = v.manifest
    true = np.minimum(v.test.scored.rul, m.rul_cap)
    order = np.argsort(true)
    x = np.arange(len(order))
    fig, ax = plt.subplots(figsize=(10, 3.8))
    ax.plot(x, true[order], "k-", lw=2, label=f"true RUL (capped at {m.rul_cap:g})")
    ax.plot(x, np.clip(v.keras_scored[order, 1], 0, 1) * m.rul_cap, "o", ms=4,
            label="float Keras")
    ax.plot(x, np.clip(v.edge_scored[order, 1], 0, 1) * m.rul_cap, "x", ms=4,
            label=f"edge {m.edge.quantization}")
    ax.set_xlabel("test unit (sorted by true RUL)")
    ax.set_ylabel("remaining useful life (cycles)")
    ax.legend()
    fig.tight_layout()
    path = out / "rul_per_unit.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def probability_over_life(v: Verification, out: Path, n_units: int = 4) -> Path:
    """The failure probability along the life of the test units that come closest to failing."""
    m = v.manifest
    every = v.test.every
    last_rul = {a: every.rul[every.asset == a].min() for a in np.unique(every.asset)}
    units = sorted(last_rul, key=lambda a: last_rul[a])[:n_units]
    fig, axes = plt.subplots(1, len(units), figsize=(4 * len(units), 3.2), squeeze=False,
                             sharey=True)
    for ax, unit in zip(axes[0], units, strict=True):
        sel = every.asset == unit
        ax.plot(every.end_time[sel], v.keras_every[sel, 0], label="float Keras")
        ax.plot(every.end_time[sel], v.edge_every[sel, 0], "--", label=m.edge.quantization)
        ax.axhline(m.thresholds.warning_enter, color="orange", lw=1, label="warning")
        ax.axhline(m.thresholds.critical_enter, color="red", lw=1, label="critical")
        fail_at = every.end_time[sel][-1] + every.rul[sel][-1]
        ax.axvline(fail_at - m.horizon, color="grey", ls=":", label=f"{m.horizon} before failure")
        ax.set_title(f"unit {unit} (RUL at end {last_rul[unit]:g})")
        ax.set_xlabel("cycle")
    axes[0][0].set_ylabel("P(fail within horizon)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path = out / "probability_over_life.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _scaling(m: Manifest) -> str:
    if m.regimes is None:
        return f"one operating regime, global {m.normalisation.method if m.normalisation else '-'}"
    r = m.regimes
    return (f"{r.count} operating regimes from {', '.join(r.settings)}, {r.method} per regime; "
            f"a tick farther than {r.max_distance:.3g} (standardised) is out of regime")


def _members_line(m: Manifest) -> list[str]:
    training = m.metrics.get("training", {})
    members, epochs = int(training.get("members", 0)), int(training.get("best_epoch", 0))
    if not members:
        return []
    return [f"- model: the mean of {members} networks trained on all training units for "
            f"{epochs} epochs (the number early stopping chose on the held-out units; the "
            "training curves are of that run)"]


def summary_markdown(v: Verification, plots: list[Path]) -> str:
    m: Manifest = v.manifest
    k, e, a = v.keras_metrics, v.edge_metrics, v.agreement
    lines = [f"# Model bundle {m.version}", "",
             f"- created {m.created}, trained on {m.source.dataset}",
             f"- features ({len(m.features)}): {', '.join(m.features)}",
             f"- normalisation: {_scaling(m)}",
             f"- window {m.window} ticks, horizon {m.horizon}, RUL cap {m.rul_cap:g}",
             f"- edge model: `{m.edge.file}` ({m.edge.quantization})",
             *_members_line(m),
             f"- signature: {'verified with a trusted key' if v.signed_by_trusted_key else 'not checked (no key given)'}",  # noqa: E501
             f"- test protocol: {v.test.protocol}", "",
             "| model | accuracy | precision | recall | F1 | RUL RMSE | NASA score |",
             "|---|---|---|---|---|---|---|"]
    for name, x in (("float Keras", k), (f"edge {m.edge.quantization}", e)):
        lines.append(f"| {name} | {x['accuracy']:.3f} | {x['precision']:.3f} | "
                     f"{x['recall']:.3f} | {x['f1']:.3f} | {x['rmse']:.2f} | "
                     f"{x['nasa_score']:.0f} |")
    lines += ["", f"Edge vs float over {a['windows']} test windows: decisions agree on "
                  f"{a['decision_agreement']:.3%} ({a['decisions_differing']} differ); "
                  f"probability difference max {a['max_prob_diff']:.4f}, mean "
                  f"{a['mean_prob_diff']:.4f}; RUL difference max {a['max_rul_diff']:.2f}, "
                  f"mean {a['mean_rul_diff']:.2f} cycles.", "",
              f"Parity gate (F1 drop <= {m.tolerances.f1_drop}, RMSE rise <= "
              f"{m.tolerances.rmse_rise}, agreement >= {m.tolerances.decision_agreement:.2%}): "
              f"**{v.gate}**", ""]
    modes = [(name, x) for name, x in m.metrics.items() if "size_bytes" in x]
    if modes:
        lines += ["Every mode measured when the bundle was trained:", "",
                  "| mode | size | median invoke | F1 | RUL RMSE | decisions agree | "
                  "max prob. diff |", "|---|---|---|---|---|---|---|"]
        for name, x in modes:
            lines.append(f"| {name} | {x['size_bytes'] / 1024:.0f} KB | "
                         f"{x['invoke_us_median']:.0f} us | {x['f1']:.3f} | {x['rmse']:.2f} | "
                         f"{_fmt(x.get('decision_agreement'), '.3%')} | "
                         f"{_fmt(x.get('max_prob_diff'), '.4f')} |")
        lines.append("")
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def write_report(v: Verification, bundle: Path, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    plots = []
    history_file = Path(bundle) / HISTORY
    if history_file.is_file():
        h = json.loads(history_file.read_text())
        plots.append(training_curves(h["history"], h["best_epoch"], out))
    plots += [confusion(v, out), rul_per_unit(v, out), probability_over_life(v, out)]
    summary = out / "summary.md"
    summary.write_text(summary_markdown(v, plots))
    return [*plots, summary]
