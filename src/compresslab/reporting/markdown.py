"""report.md's text: the configuration, the results table with intervals and verdicts, where the time goes, the
failed files, the notes and the plot links. Pure text from result rows; the plots are drawn elsewhere
(`reporting.plots`) and only linked here.
"""

from collections.abc import Iterable, Mapping, Sequence

from compresslab.reporting.formatting import DASH, KB, count, fmt, ms, one_line
from compresslab.reporting.rows import drawable, failed, sort_rows
from compresslab.results.record import as_number, label, thread_counts, thread_key
from compresslab.tflite.tensor_error import SAMPLES, WORST, worst


def report_markdown(rows: Sequence[Mapping], plots: list[tuple[str, str]], *, title: str, config_summary: Mapping,
                    notes: Sequence[str] = (), profiles: Mapping[str, Mapping] | None = None,
                    allocations: Mapping[str, Mapping] | None = None,
                    tensor_errors: Mapping[str, list] | None = None, devices: str = "") -> str:
    """The whole of report.md; `plots` are (caption, link relative to report.md) pairs, in order; `devices` the
    section of the boards' timings (`reporting.devices`)."""
    parts = [f"# {title}", config_section(config_summary), _results_section(rows),
             allocation_section(allocations or {}), tensor_error_section(rows, tensor_errors or {}),
             delegation_section(rows), _profile_section(profiles or {}), devices, failed_section(rows),
             notes_section(notes), plots_section(plots)]
    return "\n\n".join(part for part in parts if part) + "\n"


def results_table(rows: Sequence[Mapping]) -> str:
    """The main table as GitHub markdown with padded, aligned columns (readable as plain text too)."""
    threads = thread_counts(rows)
    fps_threads = 1 if 1 in threads else (threads[0] if threads else None)
    columns = [("variant", False), ("mode", False), ("acc % [95% CI]", True), ("Δ base pp", True),
               ("Δ ctrl pp", True), ("agree Keras %", True), ("gzip KB", True), ("×smaller", True),
               ("sparsity %", True), ("MACs", True),
               *((f"ms t{n}", True) for n in threads),
               *((f"× base t{n}", True) for n in threads if any(thread_key("ratio", n) in row for row in rows)),
               *(((f"FPS t{fps_threads}", True),) if fps_threads is not None else ()), ("peak MB", True)]
    body = [_table_cells(row, threads, fps_threads, rows) for row in sort_rows(drawable(rows))]
    return markdown_table(columns, body)


def _table_cells(row: Mapping, threads: list[int], fps_threads: int | None,
                 all_rows: Sequence[Mapping]) -> list[str]:
    gzip_ratio = as_number(row.get("gzip_ratio"))
    cells = [str(row["variant"]), str(row["mode"]), _accuracy_cell(row),
             change_cell(row.get("accuracy_delta_pp"), row.get("significant")),
             change_cell(row.get("accuracy_delta_control_pp"), row.get("significant_control")),
             fmt(row.get("keras_agreement"), "{:.1f}", scale=100),
             fmt(row.get("gzip_bytes"), "{:.1f}", scale=1 / KB),
             fmt(1 / gzip_ratio if gzip_ratio else None, "{:.2f}×"),
             fmt(row.get("sparsity"), "{:.1f}", scale=100),
             count(row.get("macs")),
             *(ms(row.get(thread_key("median_ms", n))) for n in threads),
             *(ratio_cell(row, n) for n in threads if any(thread_key("ratio", n) in r for r in all_rows))]
    if fps_threads is not None:
        cells.append(fmt(row.get(thread_key("fps", fps_threads)), "{:.1f}"))
    cells.append(fmt(row.get("peak_rss_mb"), "{:.1f}"))
    return cells


def ratio_cell(row: Mapping, threads: int) -> str:
    """Latency against baseline-float32, timed interleaved, with the interquartile range of its rounds."""
    ratio = as_number(row.get(thread_key("ratio", threads)))
    low, high = (as_number(row.get(thread_key(f"ratio_{q}", threads))) for q in ("p25", "p75"))
    if ratio is None:
        return DASH
    spread = f" [{low:.2f}–{high:.2f}]" if low is not None and high is not None and low != high else ""
    return f"{ratio:.2f}{spread}"


def _accuracy_cell(row: Mapping) -> str:
    low, high = as_number(row.get("accuracy_ci_low")), as_number(row.get("accuracy_ci_high"))
    interval = f" [{low * 100:.1f}, {high * 100:.1f}]" if low is not None and high is not None else ""
    return fmt(row.get("accuracy"), "{:.2f}", scale=100) + interval


def change_cell(delta, significant) -> str:
    """A change in points with its verdict: `*` significant at 0.05, `ns` not (noise, not a gain or loss)."""
    text = fmt(delta, "{:+.2f}")
    if as_number(delta) is None or significant is None:
        return text
    return f"{text} {'*' if significant else 'ns'}"


def markdown_table(columns: list[tuple[str, bool]], body: list[list[str]]) -> str:
    cells = [[cell.replace("|", "\\|") for cell in line] for line in body]
    widths = [max(3, len(name), *(len(line[k]) for line in cells)) for k, (name, _) in enumerate(columns)]

    def line(values: Iterable[str]) -> str:
        padded = (value.rjust(width) if right else value.ljust(width)
                  for value, width, (_, right) in zip(values, widths, columns))
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (width + 1) + ":") if right else ("-" * (width + 2))
                          for width, (_, right) in zip(widths, columns)) + "|"
    return "\n".join([line(name for name, _ in columns), rule, *(line(values) for values in cells)])


def config_section(config_summary: Mapping) -> str:
    if not config_summary:
        return ""
    lines = [f"- **{key}**: {_config_value(value)}" for key, value in config_summary.items()]
    return "## Configuration\n\n" + "\n".join(lines)


def _config_value(value) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{key}={_config_value(item)}" for key, item in value.items())
    if isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
        return "[" + ", ".join(_config_value(item) for item in value) + "]"
    return str(value)


def _results_section(rows: Sequence[Mapping]) -> str:
    legend = ("acc: test accuracy with its 95 % Wilson interval; Δ base: percentage points vs. "
              "baseline-float32; Δ ctrl: vs. the float control (the baseline fine-tuned with the same budget, "
              "no compression) of the same mode, i.e. what compression alone costs; `*`: significant at 0.05 "
              "(exact McNemar test on the same test images), `ns`: not significant, read as no change; "
              "agree Keras: share of test images where the file predicts what its Keras model predicts (a "
              "conversion bug shows here); gzip KB: gzipped .tflite size; ×smaller: baseline size / this size; "
              "ms tN: median latency of one inference at N threads; × base tN: latency against baseline-float32, "
              "timed in alternating rounds in one process [interquartile range over rounds]: the figure that holds "
              "across runs and machines; FPS: 1000 / median ms; peak MB: peak memory of a process running the "
              f"file. {DASH} = not measured.")
    return f"## Results\n\n{results_table(rows)}\n\n{legend}"


def delegation_section(rows: Sequence[Mapping]) -> str:
    """Per file, how much of it XNNPACK runs (the operators it leaves out run on LiteRT's reference kernels),
    and whether it qualifies for XNNPACK's sparse inference."""
    files = [row for row in sort_rows(drawable(rows)) if row.get("xnnpack_partitions") is not None]
    if not files:
        return ""
    columns = [("file", False), ("XNNPACK partitions", True), ("operators in XNNPACK %", True),
               ("operators outside XNNPACK", False), ("sparse inference", False)]
    body = [[label(row), str(row["xnnpack_partitions"]), fmt(row.get("xnnpack_operator_share"), "{:.0f}", 100),
             row.get("operators_outside_xnnpack") or "none", row.get("sparse_inference") or "—"] for row in files]
    eligible = sum(row.get("sparse_inference") == "eligible" for row in files)
    sparse_note = (f" {eligible} file(s) qualify for XNNPACK's sparse inference, where pruned 1x1 convolutions buy "
                   "speed; XNNPACK takes that path on ARM and on x86 CPUs without AVX, and runs them dense where "
                   "AVX makes dense faster." if eligible else
                   " No file qualifies for XNNPACK's sparse inference (a float model starting with a 3x3 stride-2 "
                   "convolution over 3 channels, 1x1 convolutions at least 2/3 zeros, global average pooling at the "
                   "end: `-S experiment=sparse_mobilenet`), so pruning buys size here, not speed.")
    return ("## Where the time goes\n\nWhich operators XNNPACK runs, read from each file's execution plan. Operators "
            "outside it run on LiteRT's reference kernels, and each boundary between partitions costs a hand-over."
            + sparse_note + "\n\n" + markdown_table(columns, body))


PROFILED_FILES = ("baseline-float32", "baseline-int8")


def _profile_section(profiles: Mapping[str, Mapping]) -> str:
    """Time per operator type of the baseline's float32 and int8 files, side by side."""
    shown = {name: profiles[name] for name in PROFILED_FILES if "by_type" in profiles.get(name, {})}
    if not shown:
        return ""
    types = list(dict.fromkeys(entry["op"] for profile in shown.values() for entry in profile["by_type"]))
    columns = [("operator", False)]
    for name in shown:
        columns += [(f"{name} ms", True), ("%", True), ("in XNNPACK", True)]
    body = []
    for op in types:
        cells = [op]
        for profile in shown.values():
            entry = next((e for e in profile["by_type"] if e["op"] == op), None)
            cells += (["—", "—", "—"] if entry is None else
                      [f"{entry['ms']:.4f}", f"{100 * entry['share']:.0f}", f"{entry['delegated']}/{entry['count']}"])
        body.append(cells)
    totals = ["**total**"]
    for profile in shown.values():
        totals += [f"{profile['total_ms']:.4f}", "100", f"{100 * profile['delegated_share']:.0f} % of the time"]
    threads = next(iter(shown.values()))["threads"]
    return (f"### Time per operator type ({threads} thread(s))\n\nEach file cut after every operator and the cuts "
            "timed in interleaved rounds in one process: an operator's time is how much it adds to the median "
            "latency (LiteRT 2.3.0's Python API binds no per-operator profiler). Estimates: they add up to about "
            "the whole model's median. Every file's profile, per operator, is in `reports/profile.json` (an "
            "MLflow artifact).\n\n" + markdown_table(columns, body + [totals]))


def allocation_section(allocations: Mapping[str, Mapping]) -> str:
    """Each mixed file's precision per layer, what each choice cost on the validation split, and whether the
    additive model the allocation assumed held for the whole file."""
    if not allocations:
        return ""
    parts = ["## Per-layer bit allocation (mode `mixed`)",
             "Each layer was quantized alone at each precision and scored on the validation split; an exact integer "
             "program chose one precision per layer, the least summed loss within the gzipped size target. The "
             "whole file's real size and validation loss stand beside the sums the program assumed."]
    for name, allocation in allocations.items():
        held = "met" if allocation["meets_target"] else "**missed**"
        parts.append(f"**{name}**: {allocation['gzip_bytes'] / KB:,.1f} KB gzipped against a target of "
                     f"{allocation['target_gzip_bytes'] / KB:,.1f} KB ({held}; the sums said "
                     f"{allocation['predicted_gzip_bytes'] / KB:,.1f} KB); validation loss "
                     f"{allocation['val_loss_pp']:+.2f} pp (the sums said "
                     f"{allocation['predicted_val_loss_pp']:+.2f} pp), "
                     f"against its float32 file ({allocation['float32_gzip_bytes'] / KB:,.1f} KB).")
        precisions = list(allocation["layers"][0]["tried"]) if allocation["layers"] else []
        body = [[layer["scope"].split(";")[0], layer["precision"],
                 *(f"{layer['tried'][p]['val_loss_pp']:+.2f} pp, {layer['tried'][p]['gzip_delta_bytes'] / KB:+,.1f} KB"
                   for p in precisions)] for layer in allocation["layers"]]
        parts.append(markdown_table([("layer (output tensor)", False), ("chosen", False),
                                     *((f"{p} alone: loss, size", True) for p in precisions)], body))
    return "\n\n".join(parts)


def tensor_error_section(rows: Sequence[Mapping], tensor_errors: Mapping[str, list]) -> str:
    """Each quantized file's five tensors of lowest SNR against its float32 twin; a file that lost accuracy
    beyond the control's interval gets a line naming them."""
    files = [row for row in sort_rows(drawable(rows)) if tensor_errors.get(label(row))]
    if not files:
        return ""
    body = [[label(row), *(f"{e['tensor']} {e['snr_db']:.1f}" for e in worst(tensor_errors[label(row)]))]
            for row in files]
    width = max(len(line) for line in body)
    body = [line + [""] * (width - len(line)) for line in body]
    parts = ["## Per-tensor quantization error",
             f"Each quantized file against its float32 twin on the test split's first {SAMPLES} images: the {WORST} "
             "activations of lowest signal-to-noise ratio (dB; higher is closer; errors carry forward, so the first "
             "in graph order is usually the one to blame). Every shared tensor's SNR, cosine similarity and relative "
             "error is in `reports/tensor_error.json` (an MLflow artifact). QAT files have no float32 twin and are "
             "not compared.",
             markdown_table([("file", False), *((f"worst {k + 1} (SNR dB)", False) for k in range(width - 1))], body)]
    lost = [row for row in files if row.get("significant_control")
            and (as_number(row.get("accuracy_delta_control_pp")) or 0) < 0]
    for row in lost:
        names = ", ".join(f"{e['tensor']} ({e['snr_db']:.1f} dB)" for e in worst(tensor_errors[label(row)], 3))
        parts.append(f"- {label(row)} loses accuracy beyond the control's interval: look first at {names}.")
    return "\n\n".join(parts)


def failed_section(rows: Sequence[Mapping]) -> str:
    broken = [row for row in rows if failed(row)]
    if not broken:
        return ""
    lines = [f"- **{label(row)}** (`{row.get('file') or '?'}`): {one_line(row['error'])}" for row in broken]
    return "## Failed\n\n" + "\n".join(lines)


def notes_section(notes: Sequence[str]) -> str:
    if not notes:
        return ""
    return "## Notes\n\n" + "\n".join(f"- {one_line(note)}" for note in notes)


def plots_section(plots: list[tuple[str, str]]) -> str:
    return "## Plots\n\n" + "\n\n".join(f"### {caption}\n\n![{caption}]({link})" for caption, link in plots)
