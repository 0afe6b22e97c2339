"""What people look at: the results table on the terminal and training curves as PNG."""

from __future__ import annotations


def plot_curves(runs: dict[str, list[dict]], path: str, title: str = "") -> None:
    """Test (or val) accuracy and training loss per epoch, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    for i, (name, hist) in enumerate(runs.items()):
        color = f"C{i}"  # one colour per run, one line style per split
        epochs = [r["epoch"] for r in hist]
        for key, style in (("test_acc", "-"), ("val_acc", "--"), ("train_acc", ":")):
            if key in hist[0]:
                ax_acc.plot(
                    epochs, [100 * r[key] for r in hist], style, color=color, label=f"{name} {key.split('_')[0]}"
                )
        ax_loss.plot(epochs, [r["loss"] for r in hist], color=color, label=name)
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy (solid: test, dotted: train)")
    # the history's "loss": the network's task loss on the training batches (composed forward), mean per epoch
    ax_loss.set(xlabel="epoch", ylabel="network's training loss (mean over the epoch's batches)", yscale="log",
                title="loss")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(metrics: dict) -> None:
    rows = []
    for name, final in metrics["final"].items():
        wall = metrics["epoch_wall_s"][name]
        ratio = metrics.get("wall_ratio_vs_backprop", {}).get(name)
        rows.append((name, final.get("train_acc"), final.get("val_acc"), final.get("test_acc"), wall, ratio))
    print(f"{'run':<28} {'train acc':>9} {'val acc':>8} {'test acc':>9} {'s/epoch':>8} {'× backprop':>10}")

    def fmt(v):
        return "—" if v is None else f"{100 * v:.2f}%"

    for name, tr, va, te, wall, ratio in rows:
        print(
            f"{name:<28} {fmt(tr):>9} {fmt(va):>8} {fmt(te):>9} {wall:>8.2f} "
            f"{'—' if ratio is None else f'{ratio:.2f}':>10}"
        )
