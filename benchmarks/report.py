"""Reports: JSON, markdown tables (stdout and results.md), PNG plots.

The tables are plain functions of the rows (unit-tested); plots need matplotlib (the
`bench` extra) and are skipped with a note when it is missing.
"""

import json
import math
import os

from benchmarks import machine as machine_lib


def _num(value, digits=0, suffix=""):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:,.{digits}f}{suffix}"


def _pm(row, key, digits=0, scale=1.0, suffix=""):
    """'median ± jitter' of a stat_fields group (± standard error where the row has one)."""
    if row.get(key) is None:
        return "-"
    text = _num(row[key] * scale, digits)
    jitter = row.get(f"{key}_se", row.get(f"{key}_jitter"))  # an estimate's own error first
    if jitter is not None and math.isfinite(jitter):
        text += f" ± {_num(jitter * scale, digits)}"
    return text + suffix


def _pct(value, digits=1):
    return "-" if value is None else _num(100.0 * value, digits, "%")


COLUMNS = {
    "throughput": [
        ("model", lambda r: r["model"]), ("batch", lambda r: str(r["batch_size"])),
        ("strategy", lambda r: f"{r['strategy']} x{r['replicas']}"),
        ("variant", lambda r: r["variant"]),
        ("images/sec", lambda r: _pm(r, "images_per_sec")),
        ("÷ fit", lambda r: _num(r.get("ratio_vs_keras_fit"), 3)),
        ("÷ default", lambda r: _num(r.get("ratio_vs_default_strategy"), 3)),
        ("step ms", lambda r: _num(r.get("step_ms"), 1)),
        ("efficiency", lambda r: _pct(r.get("compute_efficiency"))),
        ("cpu %", lambda r: _num(r.get("cpu_percent"))),
        ("rss MB", lambda r: _num(r.get("rss_mb")))],
    "input": [
        ("model", lambda r: r["model"]), ("batch", lambda r: str(r["batch_size"])),
        ("pipeline", lambda r: r["variant"]),
        ("pipeline img/s", lambda r: _pm(r, "pipeline_images_per_sec")),
        ("training img/s", lambda r: _pm(r, "train_images_per_sec")),
        ("no-input img/s", lambda r: _num(r.get("train_images_per_sec_no_input"))),
        ("aug. in tf.data img/s",
         lambda r: _num(r.get("train_images_per_sec_augment_in_pipeline"))),
        ("headroom", lambda r: _num(r.get("headroom"), 2, "x")),
        ("input wait", lambda r: _pct(r.get("input_wait_fraction")))],
    "checkpoint": [
        ("model", lambda r: r["model"]), ("batch", lambda r: str(r["batch_size"])),
        ("mode", lambda r: r["mode"]), ("every N", lambda r: str(r["interval"])),
        ("stall", lambda r: _pm(r, "stall", 1, 100.0, "%")),
        ("blocking ms/save", lambda r: _num(r.get("blocking_ms"), 1)),
        ("step ms (no ckpt)", lambda r: _num(r.get("baseline_step_ms"), 1)),
        ("size KB", lambda r: _num(_kb(r.get("checkpoint_bytes")))),
        ("restore ms", lambda r: _num(r.get("restore_ms"), 1))],
    "resume": [
        ("model", lambda r: r["model"]), ("batch", lambda r: str(r["batch_size"])),
        ("after", lambda r: r["variant"]), ("trials", lambda r: str(r.get("trials", "-"))),
        ("time to resume s", lambda r: _pm(r, "time_to_resume_s", 2)),
        ("steps lost", lambda r: _num(r.get("steps_lost"))),
        ("steps lost per trial", lambda r: ",".join(map(str, r.get("steps_lost_trials", [])))),
        ("exit codes", lambda r: ",".join(map(str, r.get("exit_codes", []))))],
    "scaling": [
        ("backend", lambda r: r["variant"]), ("workers", lambda r: str(r.get("workers", "-"))),
        ("model", lambda r: r["model"]),
        ("batch/worker", lambda r: str(r.get("per_worker_batch", "-"))),
        ("images/sec", lambda r: _pm(r, "images_per_sec")),
        ("efficiency", lambda r: _pct(r.get("scaling_efficiency"))),
        ("pinning", lambda r: r.get("pinning", "-")), ("note", lambda r: r.get("skipped", ""))],
}
ORDER = ("throughput", "input", "checkpoint", "resume", "scaling")


def _kb(size):
    return None if size is None else size / 1024


def format_table(rows, columns):
    """A markdown table of `rows` with `columns` [(header, row -> text)]."""
    header = [name for name, _ in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    for row in rows:
        cells = [str(fn(row)).replace("|", "\\|") for _, fn in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tables(machine, results):
    """The whole markdown report: the machine line, one table per benchmark, errors."""
    parts = [f"Machine: {machine_lib.describe(machine)}"]
    if machine.get("mode") == "quick":
        parts.append("Quick run (--quick): reduced sizes, subprocess benchmarks overlapped "
                     "with the others; a check that everything works, not figures.")
    for name in ORDER:
        rows = [r for r in results if r["benchmark"] == name and r["variant"] != "error"]
        if rows:
            parts.append(f"### {name}\n\n{format_table(rows, COLUMNS[name])}")
    errors = [r for r in results if r["variant"] == "error"]
    if errors:
        parts.append("### errors\n\n" + "\n".join(
            f"- {r['benchmark']} {r.get('model', '')} {r.get('batch_size', '')}: {r['error']}"
            for r in errors))
    return "\n\n".join(parts) + "\n"


def write_json(path, machine, results):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"machine": machine, "results": results}, f, indent=2, default=_jsonable)
        f.write("\n")


def _jsonable(value):
    return float(value) if hasattr(value, "__float__") else str(value)


def write_outputs(out_dir, machine, results, command):
    """results.md (table + the command) and the plots; returns the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    md = os.path.join(out_dir, "results.md")
    with open(md, "w", encoding="utf-8") as f:
        f.write(f"# harness-bench results\n\n`{command}`\n\n{tables(machine, results)}")
    from benchmarks import plots

    return [md] + plots.write_plots(out_dir, results)
