"""Per-case results and the study report as files: the CSV a researcher opens in a spreadsheet, and a
self-contained HTML page (tables, inline SVG charts, methods) that opens anywhere, offline.

The tables are built here once and shown by both the Dashboard page and the HTML report, so the
page and the file always state the same figures. The HTML has no script and no external reference
(no fonts, no stylesheets, no images by URL): it can be mailed or archived with the study. Case
text appears only in the per-case CSV, never in the HTML report.
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from rocore.data.tables import neutralise
from rocore.evaluation.dashboard import Dashboard
from rocore.evaluation.outputs import MODELS, RunPairs
from rocore.evaluation.pipeline import METRIC_NAMES, MODEL_NAMES
from rocore.evaluation.scales import distribution_table
from rocore.evaluation.scoring import ALL_LABEL_COLUMNS, ALL_SCORE_COLUMNS, TASKS

__all__ = [
    "TASK_NAMES",
    "acceptability_table",
    "acceptability_tests_table",
    "agreement_table",
    "bar_chart_svg",
    "confusion_table",
    "html_report",
    "json_figures",
    "metric_table",
    "order_checks_table",
    "scale_tables",
    "post_adjudication_table",
    "per_case_csv",
    "per_class_table",
    "primary_table",
    "tests_table",
    "text_report",
]

TASK_NAMES = {"regimen": "Task 1: treatment regimen", "modality": "Task 2: treatment modality",
              "icd10": "Task 3: ICD-10-CM code"}


# --------------------------------------------------------------------------- per-case results


def per_case_csv(scores: pd.DataFrame) -> bytes:
    """One row per case, task and model: identifiers, gold, output, labels and scores, as UTF-8 CSV
    (with a byte-order mark, so that spreadsheets read accents right); text cells neutralised."""
    leading = [c for c in ("case_id", "site", "case_modality", "task", "model", "run_id", "gold", "output")
               if c in scores.columns]
    columns = leading + [c for c in (*ALL_LABEL_COLUMNS, *ALL_SCORE_COLUMNS) if c in scores.columns]
    order = scores.assign(_task=scores["task"].map(TASKS.index)).sort_values(
        ["_task", "case_id", "model"], kind="stable").index
    table = scores.loc[order, columns].copy()
    for column in table.columns:
        if not pd.api.types.is_numeric_dtype(table[column]):
            table[column] = table[column].map(neutralise)
    return table.to_csv(index=False, lineterminator="\n").encode("utf-8-sig")


# --------------------------------------------------------------------------- tables


def _interval_text(ci95: Mapping | None, kind: str = "bootstrap") -> str:
    """An interval as text; `kind` names it in `ci95` (or is the key of a figure's one interval)."""
    interval = (ci95 or {}).get(kind)
    if not interval or interval[0] is None:
        return ""
    return f"[{interval[0]:.3f}, {interval[1]:.3f}]"


def _reported(ci95: Mapping | None, kinds: Sequence[str]) -> tuple[str, str]:
    """(interval text, method) of the first of `kinds` the figure has: the one the report states."""
    for kind in kinds:
        text = _interval_text(ci95, kind)
        if text:
            return text, kind
    return "", ""


def metric_table(task_report: Mapping) -> pd.DataFrame:
    """Each metric of one task: both models' means and the paired difference, with 95% intervals:
    Wilson and Newcombe (paired) for 0/1 scores, percentile bootstrap for ROUGE-1 F and macro-F1."""
    base, finetuned, paired = task_report["base"], task_report["finetuned"], task_report["paired"]
    metrics = [metric for metric in METRIC_NAMES.values() if metric in base]
    metrics += [m for m in ("precision_macro", "recall_macro", "f1_macro",
                            "precision_weighted", "recall_weighted", "f1_weighted") if m in base]
    rows = {}
    for metric in metrics:
        difference = paired["difference"].get(metric) or {"mean": None, "ci95": None}
        base_ci, kind = _reported(base["ci95"].get(metric), ("wilson", "bootstrap"))
        difference_ci, difference_kind = _reported(difference["ci95"], ("newcombe", "bootstrap"))
        rows[metric] = {
            "base": base[metric], "base 95% CI": base_ci,
            "fine-tuned": finetuned[metric],
            "fine-tuned 95% CI": _reported(finetuned["ci95"].get(metric), (kind or "bootstrap",))[0],
            "difference": difference["mean"], "difference 95% CI": difference_ci,
            "interval": f"{kind} / {difference_kind}" if kind else difference_kind,
        }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("metric")


def tests_table(task_report: Mapping) -> pd.DataFrame:
    """The paired tests of one task: per 0/1 score the exact sign test (one-sided) and exact McNemar
    (two-sided); the one-sided Wilcoxon signed-rank, labelled by its role."""
    paired = task_report["paired"]
    rows = []
    for metric, exact in paired.get("exact_tests", {}).items():
        table = exact["table"]
        rows += [{"test": "exact sign test, one-sided (fine-tuned > base)", "on": metric, "n pairs": exact["n_pairs"],
                  "statistic": float(table["finetuned_only_right"]), "p": exact["sign_test_p_one_sided"]},
                 {"test": "exact McNemar, two-sided", "on": metric, "n pairs": exact["n_pairs"],
                  "statistic": float(min(table["base_only_right"], table["finetuned_only_right"])),
                  "p": exact["mcnemar_exact_p_two_sided"]}]
    role = ("the paper's replication figure" if paired["tested_metric"] != "rouge1_f"
            else "continuous score")
    rows.append({"test": f"Wilcoxon signed-rank, one-sided ({role})", "on": paired["tested_metric"],
                 "n pairs": paired["n_pairs"], "statistic": paired["wilcoxon_statistic"],
                 "p": paired["wilcoxon_p_one_sided"]})
    return pd.DataFrame(rows).set_index("test")


def primary_table(primary: Mapping | None) -> pd.DataFrame:
    """The declared primary endpoint of each task with its raw and Holm-adjusted p-values."""
    endpoints = (primary or {}).get("endpoints", {})
    return pd.DataFrame([{"task": TASK_NAMES[task], "endpoint": e["metric"], "primary test": e["test"],
                          "p": e["p"], "p (Holm)": e["p_holm"]} for task, e in endpoints.items()],
                        columns=["task", "endpoint", "primary test", "p", "p (Holm)"]).set_index("task")


def per_class_table(task_report: Mapping) -> pd.DataFrame:
    """Precision, recall and F1 per class for both models (modality), with the gold support."""
    frame = pd.DataFrame({
        f"{MODEL_NAMES[model]} {measure}": {label: values[measure]
                                           for label, values in task_report[model]["per_class"].items()}
        for model in MODELS for measure in ("precision", "recall", "f1")
    })
    frame["support"] = pd.Series({k: v["support"] for k, v in task_report["base"]["per_class"].items()})
    return frame.rename_axis("class")


def confusion_table(task_report: Mapping, model: str) -> pd.DataFrame:
    """One model's confusion matrix: rows gold, columns output."""
    matrix = task_report[model]["confusion_matrix"]
    return pd.DataFrame(matrix["matrix"], index=pd.Index(matrix["labels"], name="gold"),
                        columns=pd.Index(matrix["labels"], name="output"))


def acceptability_table(acceptability: Mapping) -> pd.DataFrame:
    """Acceptability per model: the primary per-case share (majority rule) with its Wilson interval,
    and the secondary share of all verdicts with its case-clustered bootstrap interval."""
    rating_level = acceptability.get("rating_level", {})
    rows = {}
    for model in MODELS:
        verdicts = rating_level.get(model) or {}
        rows[MODEL_NAMES[model]] = {
            "acceptable cases": acceptability[model]["acceptable"], "cases": acceptability[model]["n"],
            "share": acceptability[model]["share"],
            "Wilson 95% CI": _interval_text(acceptability[model]["ci95"], "wilson"),
            "verdicts": verdicts.get("n_ratings"), "share of verdicts": verdicts.get("share"),
            "share of verdicts 95% CI (case bootstrap)": _interval_text(verdicts, "ci95_cluster_bootstrap"),
        }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("model")


def post_adjudication_table(figures: Mapping) -> pd.DataFrame:
    """Acceptability per model before and after adjudication, per case with Wilson intervals (the post
    figures: rocore.evaluation.acceptability.post_adjudication_figures), and the paired difference after."""
    rows = {}
    for model in MODELS:
        rows[MODEL_NAMES[model]] = {
            "acceptable cases": figures[model]["acceptable"], "cases": figures[model]["n"],
            "share": figures[model]["share"], "Wilson 95% CI": _interval_text(figures[model]["ci95"], "wilson")}
    difference = figures["paired"]["difference"]["share"]
    rows["difference (fine-tuned - base)"] = {
        "acceptable cases": None, "cases": figures["paired"]["n_pairs"], "share": difference["mean"],
        "Wilson 95% CI": _interval_text(difference["ci95"], "newcombe") + " Newcombe"}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("post-adjudication")


def acceptability_tests_table(acceptability: Mapping) -> pd.DataFrame:
    """The paired tests on per-case acceptability verdicts."""
    paired = acceptability["paired"]
    difference = paired["difference"]["share"]
    return pd.DataFrame([
        {"test": "difference in per-case share (fine-tuned - base)", "value": difference["mean"],
         "95% CI": _interval_text(difference["ci95"], "newcombe") + " Newcombe"},
        {"test": "exact sign test, one-sided (fine-tuned > base): p",
         "value": paired["sign_test_p_one_sided"], "95% CI": ""},
        {"test": "exact McNemar, two-sided: p", "value": paired["mcnemar_exact_p"], "95% CI": ""},
        {"test": "Wilcoxon signed-rank, one-sided (the paper's replication figure): p",
         "value": paired["wilcoxon_p_one_sided"], "95% CI": ""},
    ]).set_index("test")


def _agreement_column(agreement: Mapping | None) -> dict:
    if agreement is None:
        return {}
    column = {"items": agreement["n_items"], "raters": agreement["n_raters"],
              "ratings per item (k)": agreement["ratings_per_item"],
              "Fleiss' kappa": agreement["fleiss_kappa"], "items with k ratings": agreement["n_items_fleiss"],
              "Krippendorff's alpha": agreement["krippendorff_alpha"],
              "items with 2+ ratings": agreement["n_items_krippendorff"]}
    for pair in agreement["cohen_kappa_pairs"]:
        names = " & ".join(pair["raters"])
        column[f"Cohen's kappa {names}"] = pair["kappa"]
        column[f"items {names}"] = pair["n_items"]
    return column


def agreement_table(agreement: Mapping) -> pd.DataFrame:
    """Inter-rater agreement per model and pooled, each with its number of items; None where undefined."""
    columns = {MODEL_NAMES[m]: _agreement_column(agreement.get("by_model", {}).get(m)) for m in MODELS}
    columns["pooled"] = _agreement_column(agreement)
    return pd.DataFrame({name: pd.Series(values, dtype=object) for name, values in columns.items()})


def order_checks_table(checks: Mapping) -> pd.DataFrame:
    """Side and queue-position checks of the blinded design, each with its Wilson interval."""
    side = checks["preference_for_side_a"]
    rows = [{"check": "preferences for the output shown as A", "n": side["n"], "share": side["share"],
             "95% CI": _interval_text(side, "ci95_wilson"), "p (vs 1/2)": side["binomial_p_two_sided"]}]
    for half, figures in checks["acceptability_by_queue_half"].items():
        rows.append({"check": f"verdicts acceptable, {half} half of the queue", "n": figures["n"],
                     "share": figures["share"], "95% CI": _interval_text(figures, "ci95_wilson"),
                     "p (vs 1/2)": None})
    return pd.DataFrame(rows).set_index("check")


def _share_text(share: Mapping) -> str:
    interval = share["ci95_cluster_bootstrap"]
    if share["share"] is None:
        return ""
    return f"{share['share']:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")


def scale_tables(scales: Mapping) -> list[tuple[str, pd.DataFrame]]:
    """Per scale the study asked (rocore.evaluation.scales.scale_figures): the ratings per level and model,
    then its figures: per-case means and the one-sided Wilcoxon test, ordinal agreement, and for harm the
    shares of ratings finding severe and any harm with their case-clustered 95% intervals."""
    tables = []
    for entry in scales.values():
        tables.append((f"{entry['name']}: ratings per level", distribution_table(entry, MODEL_NAMES)))
        rows: dict[str, str] = {}
        comparison, agreement = entry.get("comparison"), entry.get("agreement")
        if comparison:
            for model in MODELS:
                rows[f"per-case mean, {MODEL_NAMES[model]}"] = f"{comparison[f'{model}_mean']:.3f}"
            p = comparison["wilcoxon_p_one_sided"]
            rows[f"one-sided Wilcoxon p (fine-tuned {entry['better']}), {comparison['n_cases']} cases"] = (
                "" if p is None else f"{p:.3g}")
        if agreement:
            alpha = agreement["krippendorff_alpha"]
            rows[f"Krippendorff's alpha (ordinal), {agreement['n_items_krippendorff']} outputs"] = (
                "" if alpha is None else f"{alpha:.3f}")
            for pair in agreement["cohen_kappa_pairs"]:
                kappa = pair["kappa"]
                rows[f"Cohen's kappa ({agreement['cohen_kappa_weights']}), {' & '.join(pair['raters'])}, "
                     f"{pair['n_items']} outputs"] = "" if kappa is None else f"{kappa:.3f}"
        for model, shares in entry.get("shares", {}).items():
            rows[f"share of ratings: severe harm, {MODEL_NAMES[model]} [95% CI]"] = _share_text(shares["severe"])
            rows[f"share of ratings: any harm, {MODEL_NAMES[model]} [95% CI]"] = _share_text(shares["any"])
        if rows:
            tables.append((f"{entry['name']}: figures", pd.DataFrame({"value": rows}).rename_axis("figure")))
    return tables


def json_figures(view: Dashboard) -> dict:
    """What `evaluate --json` adds to the evaluation report: the primary endpoints, the methods
    paragraph and the blinded review's figures (None without a review study), under stable keys."""
    reviews = view.reviews
    review = None
    if reviews is not None:
        review = {"study": reviews.study, "n_assigned": reviews.n_assigned, "n_rated": reviews.n_rated,
                  "acceptability": reviews.acceptability, "agreement": reviews.agreement,
                  "order_checks": reviews.order_checks, "message": reviews.message, "notes": reviews.notes,
                  "post_adjudication": reviews.post_adjudication, "scales": reviews.scales}
    return {"primary": view.primary, "methods_text": view.methods_text, "review": review}


# --------------------------------------------------------------------------- text for a terminal


def _p_text(value) -> str:
    if value is None or pd.isna(value):
        return "-"
    return "< 1e-300" if value == 0 else f"{value:.3g}"


def _task_text(task: str, task_report: Mapping) -> list[str]:
    paired = task_report["paired"]
    dropped = sum(paired["n_dropped"].values())
    means = metric_table(task_report)
    shown = pd.DataFrame({
        name: [("-" if pd.isna(value) else f"{value:{'+' if name == 'difference' else ''}.3f}")
               + (f" {interval}" if interval and not pd.isna(value) else "")
               for value, interval in zip(means[name], means[f"{name} 95% CI"])]
        for name in ("base", "fine-tuned", "difference")}, index=means.index)
    lines = [f"== {task}: {paired['n_pairs']} paired cases" + (f", {dropped} left out" if dropped else "") + " ==",
             shown.to_string()]
    for metric, exact in paired.get("exact_tests", {}).items():
        lines.append(f"{metric}: exact sign test one-sided p = {_p_text(exact['sign_test_p_one_sided'])}; "
                     f"exact McNemar two-sided p = {_p_text(exact['mcnemar_exact_p_two_sided'])}")
    role = "paper's replication figure" if paired["tested_metric"] != "rouge1_f" else "fine-tuned > base"
    lines.append(f"Wilcoxon one-sided ({paired['tested_metric']}, {role}): "
                 f"p = {_p_text(paired['wilcoxon_p_one_sided'])}")
    if "per_class" in task_report["base"]:
        lines += ["per class:", per_class_table(task_report).to_string(float_format="{:.3f}".format)]
    if "confusion_matrix" in task_report["base"]:
        for model in MODELS:
            lines += [f"confusion matrix, {model} (rows gold, columns output):",
                      confusion_table(task_report, model).to_string()]
    return lines


def text_report(report: Mapping) -> str:
    """The report as text tables for a terminal: the same tables as the page, tests and notes."""
    lines: list[str] = []
    for task, task_report in report["tasks"].items():
        lines += _task_text(task, task_report) + [""]
    if report.get("primary"):
        lines += ["primary endpoints (Holm-adjusted across the family):",
                  primary_table(report["primary"]).to_string(float_format="{:.3g}".format), ""]
    review = report.get("review") or {}
    if review.get("acceptability"):
        lines += [f"== clinical acceptability: study {review['study']['name']} ==",
                  acceptability_table(review["acceptability"]).to_string(float_format="{:.3f}".format),
                  acceptability_tests_table(review["acceptability"]).to_string(float_format="{:.3g}".format),
                  "inter-rater agreement:", agreement_table(review["agreement"]).to_string(), ""]
    if review.get("post_adjudication"):
        figures = review["post_adjudication"]
        lines += [f"after adjudication ({figures['n_adjudicated']} of {figures['n_disagreeing']} disagreeing "
                  "cases adjudicated):",
                  post_adjudication_table(figures).to_string(float_format="{:.3f}".format), ""]
    for title, table in scale_tables(review.get("scales") or {}):
        lines += [f"{title}:", table.to_string(float_format="{:.3f}".format), ""]
    if report.get("methods_text"):
        lines += ["methods:", report["methods_text"], ""]
    if report["notes"]:
        lines += ["notes:", *(f"- {note}" for note in report["notes"])]
    return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------- inline SVG charts

_COLOURS = ("#8c8c8c", "#1f6fb4", "#d9822b", "#3a9b5c")
# The metrics drawn as bars in the HTML report (all of them are in its tables).
_CHARTED_METRICS = ("accuracy", "rouge1_f", "f1_macro", "accuracy_category", "schedule_match")


def bar_chart_svg(frame: pd.DataFrame, *, title: str, x_max: float | None = None,
                  intervals: Mapping[str, Sequence] | None = None, value_format: str = "{:.3f}") -> str:
    """Horizontal grouped bars: one group per row of `frame`, one bar per column (series).

    `intervals` maps a column to one (low, high) pair (or None) per row, drawn as whiskers.
    Plain SVG, no script and no namespace URL, to be inlined in an HTML page.
    """
    label_w, bar_w, value_w, bar_h, gap = 170, 360, 70, 13, 8
    series = list(frame.columns)
    values = frame.to_numpy(dtype=float)
    top = float(x_max if x_max is not None else np.nanmax(values, initial=0.0)) or 1.0
    legend_h = 22
    group_h = bar_h * len(series) + gap
    height = legend_h + 20 + group_h * len(frame) + 6
    width = label_w + bar_w + value_w
    parts = [(f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
              f'role="img" aria-label="{html.escape(title)}">'),
             f'<text x="0" y="14" font-weight="bold">{html.escape(title)}</text>']
    for j, name in enumerate(series):
        x = label_w + j * 120
        parts.append(f'<rect x="{x}" y="{legend_h - 4}" width="10" height="10" fill="{_COLOURS[j % 4]}"/>'
                     f'<text x="{x + 14}" y="{legend_h + 5}">{html.escape(str(name))}</text>')
    y = legend_h + 20
    scale = bar_w / top
    for i, label in enumerate(frame.index):
        parts.append(f'<text x="{label_w - 6}" y="{y + group_h / 2}" text-anchor="end">'
                     f'{html.escape(str(label))}</text>')
        for j, name in enumerate(series):
            value = values[i, j]
            by = y + j * bar_h
            if not np.isnan(value):
                parts.append(f'<rect x="{label_w}" y="{by}" width="{max(value, 0) * scale:.1f}" '
                             f'height="{bar_h - 2}" fill="{_COLOURS[j % 4]}"/>')
                parts.append(f'<text x="{label_w + bar_w + 6}" y="{by + bar_h - 3}">'
                             f'{html.escape(value_format.format(value))}</text>')
            interval = (intervals or {}).get(name)
            if interval is not None and interval[i] is not None and interval[i][0] is not None:
                low, high = (float(v) * scale + label_w for v in interval[i])
                mid = by + (bar_h - 2) / 2
                parts.append(f'<path d="M{low:.1f},{mid:.1f}H{high:.1f}M{low:.1f},{mid - 4:.1f}V{mid + 4:.1f}'
                             f'M{high:.1f},{mid - 4:.1f}V{mid + 4:.1f}" stroke="#222" fill="none"/>')
        y += group_h
    parts.append("</svg>")
    return "".join(parts)


# --------------------------------------------------------------------------- HTML report

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
svg.chart { display: block; margin: 0.5em 0 1.5em; font-size: 11px; }
.note { color: #555; font-size: 0.9em; } dt { font-weight: bold; margin-top: 0.6em; }
"""


def _table_html(frame: pd.DataFrame) -> str:
    return frame.to_html(escape=True, na_rep="-", float_format=lambda v: f"{v:.4g}", border=0)


def _list_html(items: Mapping) -> str:
    parts = ["<dl>"]
    for key, value in items.items():
        body = _list_html(value) if isinstance(value, Mapping) else html.escape(str(value))
        parts.append(f"<dt>{html.escape(str(key))}</dt><dd>{body}</dd>")
    return "".join(parts) + "</dl>"


def _chart_interval(ci95: Mapping | None) -> Sequence | None:
    ci95 = ci95 or {}
    return ci95.get("wilson") or ci95.get("bootstrap")


def _task_html(task: str, task_report: Mapping, view: Dashboard) -> list[str]:
    means = metric_table(task_report)
    out = [f"<h2>{html.escape(TASK_NAMES[task])}</h2>",
           f"<p>{task_report['paired']['n_pairs']} paired cases.</p>",
           _table_html(means), _table_html(tests_table(task_report))]
    shown = means.loc[[m for m in means.index if m in _CHARTED_METRICS]]
    if len(shown):
        out.append(bar_chart_svg(
            shown[["base", "fine-tuned"]], title=f"{task}: mean per-case score, 95% CI (Wilson for 0/1 scores, "
            "bootstrap for ROUGE-1 F and macro-F1)", x_max=1.0,
            intervals={MODEL_NAMES[m]: [_chart_interval(task_report[m]["ci95"].get(metric))
                                        for metric in shown.index] for m in MODELS}))
    if "per_class" in task_report["base"]:
        per_class = per_class_table(task_report)
        out += ["<h3>Per class</h3>", _table_html(per_class),
                bar_chart_svg(per_class[["base f1", "fine-tuned f1"]], title="F1 per modality", x_max=1.0)]
    if "confusion_matrix" in task_report["base"]:
        for model in MODELS:
            out += [f"<h3>Confusion matrix, {MODEL_NAMES[model]} (rows gold, columns output)</h3>",
                    _table_html(confusion_table(task_report, model))]
    if task == "regimen" and view.rouge_histogram is not None:
        out.append(bar_chart_svg(view.rouge_histogram, title="ROUGE-1 F per case: number of cases per bin",
                                 value_format="{:.0f}"))
    if task == "icd10" and view.icd10_codes is not None and len(view.icd10_codes):
        out += ["<h3>Most frequent gold codes: share of exact codes</h3>", _table_html(view.icd10_codes),
                bar_chart_svg(view.icd10_codes[["base", "fine-tuned"]], title="Exact code per gold code",
                              x_max=1.0)]
    return out


def _reviews_html(view: Dashboard) -> list[str]:
    reviews = view.reviews
    out = ["<h2>Clinical review</h2>"]
    if reviews is None:
        return out + ['<p class="note">No review study on these runs: no ratings yet.</p>']
    out.append(f"<p>Study {reviews.study['study_id']} ({html.escape(reviews.study['name'])}), "
               f"task {html.escape(reviews.study['task'])}: {reviews.n_rated} of {reviews.n_assigned} "
               f"assignments rated.{' ' + html.escape(reviews.closed) if reviews.closed else ''}</p>")
    if reviews.acceptability is None:
        out.append(f'<p class="note">{html.escape(reviews.message or "No ratings yet.")}</p>')
    else:
        table = acceptability_table(reviews.acceptability)
        out += [_table_html(table), _table_html(acceptability_tests_table(reviews.acceptability)),
                bar_chart_svg(table[["share"]], title="Share judged acceptable, 95% Wilson CI", x_max=1.0,
                              intervals={"share": [reviews.acceptability[m]["ci95"].get("wilson")
                                                   for m in MODELS]})]
    if reviews.post_adjudication is not None:
        figures = reviews.post_adjudication
        out += ["<h3>Acceptability after adjudication</h3>",
                f"<p>{figures['n_adjudicated']} of {figures['n_disagreeing']} cases whose reviewers disagree "
                "adjudicated; the figures above are before adjudication.</p>",
                _table_html(post_adjudication_table(figures))]
    if reviews.agreement is not None:
        out += ["<h3>Inter-rater agreement (acceptability)</h3>",
                _table_html(agreement_table(reviews.agreement))]
    for title, table in scale_tables(reviews.scales):
        out += [f"<h3>{html.escape(title)}</h3>", _table_html(table)]
    if reviews.order_checks is not None:
        out += ["<h3>Position and order checks</h3>", _table_html(order_checks_table(reviews.order_checks))]
    out += ["<h3>Review progress per reviewer</h3>", _table_html(reviews.progress)]
    return out


def html_report(view: Dashboard, *, title: str = "Base against fine-tuned: study report") -> str:
    """The whole report as one HTML page: every table and chart of the dashboard, methods and notes."""
    generated = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    source = "; ".join([f"{key}: {value}" for key, value in view.source.items()
                        if key not in ("runs", "base_run", "finetuned_run")]
                       + ([f"runs: {RunPairs.from_source(view.source).describe()}"] if "runs" in view.source else []))
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
           f"<h1>{html.escape(title)}</h1>",
           (f'<p class="note">{html.escape(source)}. Filters: {html.escape(view.filters.describe())}. '
            f"{view.n_cases} cases. Generated {generated}.</p>")]
    if view.report is None:
        out.append(f"<p>{html.escape(view.message or 'Nothing to evaluate.')}</p>")
    else:
        if view.primary is not None:
            out += ["<h2>Primary endpoints</h2>", _table_html(primary_table(view.primary))]
        for task, task_report in view.report["tasks"].items():
            out += _task_html(task, task_report, view)
    out += _reviews_html(view)
    out += ["<h2>Methods</h2>", f"<p>{html.escape(view.methods_text)}</p>", _list_html(view.methods)]
    if view.report is not None:
        out += ["<h3>Settings and versions</h3>", _list_html(view.report["methods"])]
    notes = [*view.run_notes, *(view.report["notes"] if view.report else []),
             *(view.reviews.notes if view.reviews is not None else [])]
    if notes:
        out += ["<h2>Notes</h2><ul>", *(f"<li>{html.escape(note)}</li>" for note in notes), "</ul>"]
    out.append("</body></html>")
    return "\n".join(out)
