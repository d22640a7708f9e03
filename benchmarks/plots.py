"""PNG plots: throughput per variant, checkpoint stall against interval, scaling."""

import os
import sys


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        print("harness-bench: matplotlib not installed (pip install -e '.[bench]'): "
              "no plots", file=sys.stderr)
        return None
    matplotlib.use("Agg")  # files only: no display on a training host
    import matplotlib.pyplot as plt

    return plt


def write_plots(out_dir, results):
    plt = _pyplot()
    if plt is None:
        return []
    written = []
    for name, fn in (("throughput.png", _throughput), ("checkpoint_stall.png", _stall),
                     ("scaling.png", _scaling)):
        rows = [r for r in results if r["variant"] != "error" and not r.get("skipped")]
        fig = fn(plt, rows)
        if fig is not None:
            path = os.path.join(out_dir, name)
            fig.savefig(path, dpi=110, bbox_inches="tight")
            plt.close(fig)
            written.append(path)
    return written


def _throughput(plt, rows):
    rows = [r for r in rows if r["benchmark"] == "throughput"]
    if not rows:
        return None
    models = list(dict.fromkeys(r["model"] for r in rows))
    # One panel per model: a ResNet's images/sec would flatten the CNN's bars otherwise.
    fig, axes = plt.subplots(1, len(models), figsize=(4.5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        _throughput_panel(ax, [r for r in rows if r["model"] == model], model)
    fig.suptitle("Training throughput: harness vs Keras fit (median ± robust σ)")
    return fig


def _throughput_panel(ax, rows, model):
    configs = list(dict.fromkeys((r["batch_size"], r["strategy"], r["replicas"]) for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    width = 0.8 / len(variants)
    for i, variant in enumerate(variants):
        points = [(j + i * width, r["images_per_sec"], r.get("images_per_sec_jitter") or 0)
                  for j, config in enumerate(configs) for r in rows
                  if r["variant"] == variant
                  and (r["batch_size"], r["strategy"], r["replicas"]) == config]
        if points:
            xs, ys, errs = zip(*points)
            ax.bar(xs, ys, width, yerr=errs, capsize=3, label=variant)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(configs))])
    ax.set_xticklabels([f"batch {b}\n{s} x{n}" for b, s, n in configs], fontsize=8)
    ax.set_ylabel("images/sec")
    ax.set_title(model)
    ax.legend(fontsize=8)


def _stall(plt, rows):
    rows = [r for r in rows if r["benchmark"] == "checkpoint" and r.get("interval")]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in dict.fromkeys((r["model"], r["batch_size"], r["mode"]) for r in rows):
        line = sorted((r for r in rows if (r["model"], r["batch_size"], r["mode"]) == key),
                      key=lambda r: r["interval"])
        ax.errorbar([r["interval"] for r in line], [100 * r["stall"] for r in line],
                    yerr=[100 * (r.get("stall_jitter") or 0) for r in line], marker="o",
                    capsize=3, label=f"{key[2]} ({key[0]}, batch {key[1]})")
    ax.set_xscale("log")
    ax.axhline(0, color="grey", linewidth=0.5)
    ax.set_xlabel("checkpoint every N steps")
    ax.set_ylabel("stall: extra time vs no checkpoints (%)")
    ax.set_title("Checkpoint stall against interval")
    ax.legend(fontsize=8)
    return fig


def _scaling(plt, rows):
    rows = [r for r in rows if r["benchmark"] == "scaling" and r.get("images_per_sec")]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(5, 4))
    for variant in dict.fromkeys(r["variant"] for r in rows):
        line = sorted((r for r in rows if r["variant"] == variant), key=lambda r: r["workers"])
        ax.errorbar([r["workers"] for r in line], [r["images_per_sec"] for r in line],
                    yerr=[r.get("images_per_sec_jitter") or 0 for r in line], marker="o",
                    capsize=3, label=variant)
    ax.set_xticks(sorted({r["workers"] for r in rows}))
    ax.set_xlabel("workers")
    ax.set_ylabel("images/sec (all workers)")
    ax.set_title("Scaling on localhost")
    ax.legend(fontsize=8)
    return fig
