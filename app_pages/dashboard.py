"""Dashboard: base against fine-tuned per task, and the blinded review; live as outputs and ratings arrive."""

import time

import pandas as pd
import streamlit as st

from app_pages.access import require_staff
from rocore.evaluation import dashboard, report
from rocore.evaluation.outputs import EvaluationInputError, RunPairs, run_pairs
from rocore.evaluation.pipeline import MODEL_NAMES
from rocore.generation import runs as generation
from rocore.store.db import default_db_path, opened

DB = default_db_path()
require_staff()


@st.cache_resource
def score_cache() -> dashboard.ScoreCache:
    """One cache for every session: a run is scored once, whoever looks at it."""
    return dashboard.ScoreCache()


st.title("Dashboard")
st.caption("Fine-tuned against base on the same held-out cases: every figure with its 95% interval and "
           "paired test, and the oncologists' blinded verdicts. It refreshes itself while runs and ratings "
           "arrive.")

with opened(DB) as conn:
    runs = generation.list_runs(conn)
    matched = generation.matched_run_pairs(conn)
    pair = generation.suggested_run_pair(conn)
    sites, modalities = dashboard.filter_options(conn)
if len(runs) < 2:
    st.info("No base and fine-tuned generation runs to compare yet: run both on the Generate page first.")
    st.stop()

labels = {run["run_id"]: run["label"] for run in runs}
ids = list(labels)
choices = ["Runs matched per task", "Two runs I choose"] if matched else ["Two runs I choose"]
pairing = st.radio("Compare", choices, horizontal=True,
                   help="Matched: for each task, the newest fine-tuned run that generated it with the newest base "
                        "run of the same model, split part and prompt format that generated it too.")
left, right = st.columns(2)
named = None
if pairing == "Two runs I choose":
    base_run = left.selectbox("Base run", ids, index=ids.index(pair[0]), format_func=labels.get)
    finetuned_run = right.selectbox("Fine-tuned run", ids, index=ids.index(pair[1]), format_func=labels.get)
    named = [(base_run, finetuned_run)]
chosen_sites = left.multiselect("Disease site", sites, placeholder="all sites")
chosen_modalities = right.multiselect("Gold modality", modalities, placeholder="all modalities")
filters = dashboard.Filters(tuple(chosen_sites), tuple(chosen_modalities))
try:
    with opened(DB) as conn:
        compared = run_pairs(conn, named)
        studies = dashboard.studies_for(conn, compared)
except EvaluationInputError as exc:
    st.error(str(exc))
    st.stop()
if named is None:
    st.caption("Compared: " + "; ".join(f"{', '.join(tasks)}: {labels[base]} against {labels[tuned]}"
                                        for (base, tuned), tasks in compared.distinct().items()))
study_id = None
if len(studies) > 1:
    names = {s["study_id"]: f"{s['name']} (study {s['study_id']})" for s in studies}
    default = dashboard.default_study(studies)
    study_id = st.selectbox("Review study", list(names), format_func=names.get,
                            index=None if default is None else list(names).index(default),
                            placeholder="No study has ratings yet")


def show_table(frame: pd.DataFrame, where=st, **kwargs) -> None:
    """A table whose undefined figures (a kappa without items, a test not run) show a dash, not "None"."""
    where.dataframe(frame, placeholder="–", **kwargs)


def share_chart(frame: pd.DataFrame, title: str, height: int) -> None:
    """Horizontal bars of shares on a 0 to 1 axis, one group per row in the frame's order: st.bar_chart
    ends the axis at the longest bar (80% looks full) and sorts the rows alphabetically."""
    rows = frame.index.name
    encoding = {"y": {"field": rows, "type": "nominal", "sort": frame.index.tolist(), "title": None},
                "x": {"field": "value", "type": "quantitative", "scale": {"domain": [0, 1]}, "title": title,
                      "axis": {"tickCount": 5}}}
    if len(frame.columns) > 1:
        encoding |= {"yOffset": {"field": "series", "sort": frame.columns.tolist()},
                     "color": {"field": "series", "type": "nominal", "sort": frame.columns.tolist(), "title": None,
                               "legend": {"orient": "bottom"}}}
    bars = frame.reset_index().melt(id_vars=rows, var_name="series", value_name="value")
    st.vega_lite_chart(bars, {"mark": {"type": "bar", "tooltip": True}, "encoding": encoding}, height=height)


def show_task(task: str, task_report: dict, view: dashboard.Dashboard) -> None:
    show_table(report.metric_table(task_report), column_config={
        c: st.column_config.NumberColumn(format="%.3f") for c in ("base", "fine-tuned", "difference")})
    show_table(report.tests_table(task_report),
               column_config={"p": st.column_config.NumberColumn(format="%.3g")})
    if task == "regimen" and view.rouge_histogram is not None:
        st.caption("ROUGE-1 F per case: number of cases per bin")
        st.bar_chart(view.rouge_histogram, stack=False, height=260)
    if task == "modality":
        st.caption("F1 per modality")
        per_class = report.per_class_table(task_report)
        share_chart(per_class[["base f1", "fine-tuned f1"]], "F1", height=220)
        show_table(per_class)
        for column, model in zip(st.columns(2), ("base", "finetuned")):
            column.caption(f"Confusion matrix, {MODEL_NAMES[model]} (rows gold, columns output)")
            show_table(report.confusion_table(task_report, model), where=column)
    if task == "icd10" and view.icd10_codes is not None:
        st.caption("Most frequent gold codes, most frequent first: share of outputs that are exactly the code")
        share_chart(view.icd10_codes[["base", "fine-tuned"]], "share of exact codes", height=320)


def show_reviews(reviews: dashboard.Reviews | None) -> None:
    if reviews is None:
        st.info("No ratings yet: no review study compares these two runs.")
        return
    st.caption(f"Study {reviews.study['study_id']} ({reviews.study['name']}), task {reviews.study['task']}: "
               f"{reviews.n_rated:,} of {reviews.n_assigned:,} assignments rated.")
    if reviews.acceptability is None:
        st.info(reviews.message)
    else:
        table = report.acceptability_table(reviews.acceptability)
        show_table(table, column_config={"share": st.column_config.NumberColumn(format="%.3f")})
        show_table(report.acceptability_tests_table(reviews.acceptability),
                   column_config={"value": st.column_config.NumberColumn(format="%.3g")})
        share_chart(table[["share"]], "share of cases judged acceptable", height=140)
        figures = reviews.post_adjudication
        st.caption(f"After adjudication ({figures['n_adjudicated']} of {figures['n_disagreeing']} cases whose "
                   "reviewers disagree adjudicated); the figures above are before adjudication")
        show_table(report.post_adjudication_table(figures),
                   column_config={"share": st.column_config.NumberColumn(format="%.3f")})
        st.caption("Inter-rater agreement on acceptability, per model and pooled, with the items behind each")
        show_table(report.agreement_table(reviews.agreement))
        for title, table in report.scale_tables(reviews.scales):
            st.caption(title)
            show_table(table, column_config={"fine-tuned share": st.column_config.NumberColumn(format="%.3f"),
                                             "base share": st.column_config.NumberColumn(format="%.3f")})
    st.caption("Review progress per reviewer (whole study)")
    show_table(reviews.progress,
               column_config={"share rated": st.column_config.ProgressColumn(min_value=0, max_value=1)})


@st.fragment(run_every=dashboard.REFRESH_S)
def live(compared: RunPairs, filters: dashboard.Filters, study_id: int | None) -> None:
    try:
        with opened(DB) as conn:
            view = dashboard.compute(conn, score_cache(), compared, filters, study_id)
    except EvaluationInputError as exc:
        st.error(str(exc))
        return
    first, second = st.columns(2)
    first.metric("Cases", f"{view.n_cases:,}")
    second.caption(f"Filters: {filters.describe()}. Updated {time.strftime('%H:%M:%S')}; "
                   f"refreshes every {dashboard.REFRESH_S} s.")
    if view.report is None:
        st.warning(view.message)
    else:
        st.caption("Primary endpoints: one per task, p-values Holm-adjusted across them")
        show_table(report.primary_table(view.primary),
                   column_config={p: st.column_config.NumberColumn(format="%.3g") for p in ("p", "p (Holm)")})
        tasks = list(view.report["tasks"])
        for tab, task in zip(st.tabs([report.TASK_NAMES[t] for t in tasks]), tasks):
            with tab:
                show_task(task, view.report["tasks"][task], view)
    st.subheader("Clinical acceptability")
    show_reviews(view.reviews)
    name = "runs-" + "-".join(map(str, compared.run_ids()))
    left, right = st.columns(2)
    left.download_button("Per-case results (CSV)", lambda: report.per_case_csv(view.scores),
                         file_name=f"{name}-per-case.csv", mime="text/csv", on_click="ignore",
                         disabled=view.scores.empty)
    right.download_button("Report (HTML)", lambda: report.html_report(view), file_name=f"{name}-report.html",
                          mime="text/html", on_click="ignore")
    with st.expander("Methods: which tests and settings made each figure"):
        st.markdown("**For the paper** (copy with the button at the right):")
        st.code(view.methods_text, language=None, wrap_lines=True)
        if view.reviews is not None and view.reviews.order_checks is not None:
            st.markdown("**Position and order checks** (not run in the paper)")
            show_table(report.order_checks_table(view.reviews.order_checks),
                       column_config={"share": st.column_config.NumberColumn(format="%.3f")})
        for figure, text in view.methods.items():
            st.markdown(f"**{figure}.** {text}")
        notes = [*view.run_notes, *(view.report["notes"] if view.report else []),
                 *(view.reviews.notes if view.reviews else [])]
        if notes:
            st.markdown("**Notes.**\n" + "\n".join(f"- {note}" for note in notes))


live(compared, filters, study_id)
