"""Admin: blinded review studies and their progress, the people who sign in, and the audit log.

For researchers and administrators only (app.py lists it for them; rocore checks the role again).
"""

import pandas as pd
import streamlit as st

from app_pages.access import require_staff
from rocore.evaluation import scales
from rocore.generation import runs as generation
from rocore.review import adjudication, auth, blinding, practice
from rocore.review import studies as review
from rocore.store.backup import last_backup
from rocore.store.db import default_db_path, opened
from rocore.model.prompts import TASKS


DB = default_db_path()

user = require_staff().as_session()
client = auth.web_client(st.context.ip_address)

st.title("Admin")

with opened(DB) as conn:
    runs = generation.list_runs(conn)
    pair = generation.suggested_run_pair(conn)
    everyone = auth.list_users(conn)
    active = {p["reviewer_id"]: p for p in everyone if p["active"]}
    id_of = {p["name"]: p["reviewer_id"] for p in everyone}
    backup = last_backup(conn)
    lockouts = auth.locked_out(conn, actor_id=user["id"])

how_to_back_up = f"`python -m rocore backup --db {DB} --out FOLDER` (safe while the app runs)"
if backup is None:
    st.warning(f"This database has never been backed up: {how_to_back_up}.")
else:
    st.caption(f"Last backup: {backup['at'][:16].replace('T', ' ')} UTC by {backup['actor']}, to "
               f"`{backup['path']}`. Back up again with {how_to_back_up}.")
if lockouts:
    st.warning(f"Sign-in is slowed for {len(lockouts)} name(s) or address(es) after failed attempts: "
               "see People.")

tab_studies, tab_people, tab_audit = st.tabs(["Studies", "People", "Audit log"])


def change_study(action, said, **arguments) -> None:
    """Run one of rocore's changes to a study; `said(result)` is shown after the page reloads with it."""
    try:
        with opened(DB) as conn:
            result = action(conn, actor_id=user["id"], client=client, **arguments)
    except (review.ReviewError, auth.AuthError) as exc:
        st.error(str(exc))
        return
    st.session_state["admin-notice"] = said(result)
    st.rerun()


def counted(by_name: dict) -> str:
    return ", ".join(f"{name} ({n})" for name, n in by_name.items())


def study_controls(study: dict, progress: list[dict]) -> None:
    """Grow, repair or close a running study."""
    sid, in_study = study["study_id"], {row["reviewer"] for row in progress}
    join, repair, close = st.columns(3)
    newcomer = join.selectbox("Add a reviewer", [r for r in active if active[r]["name"] not in in_study],
                              format_func=lambda r: active[r]["name"], index=None, key=f"join-{sid}",
                              help="They take over unrated cases from the reviewers with the most left; "
                                   "each case keeps its number of reviewers and ratings given stay.")
    if join.button("Add to the study", key=f"join-button-{sid}", disabled=newcomer is None):
        change_study(review.add_reviewer_to_study, lambda r: (
            f"Added '{r['reviewer']}' to '{study['name']}': {r['n_assignments']} unrated cases taken over from "
            f"{counted(r['from'])}."), study_id=sid, reviewer_id=newcomer)
    departing = repair.selectbox("Reassign the unrated cases of",
                                 [row["reviewer"] for row in progress if row["done"] < row["assigned"]],
                                 index=None, key=f"from-{sid}", help="Ratings they gave stay.")
    to = repair.multiselect("To (none chosen: every other active reviewer of the study)",
                            [r for r in active if active[r]["name"] != departing],
                            format_func=lambda r: active[r]["name"], key=f"to-{sid}")
    if repair.button("Reassign", key=f"reassign-{sid}", disabled=departing is None):
        change_study(review.reassign_unrated, lambda r: (
            f"Reassigned {r['moved']} unrated cases of '{r['from']}' to {counted(r['to'])}."
            + (f" {r['left']} stay with them: every other reviewer already has those cases." if r["left"] else "")),
            study_id=sid, from_reviewer_id=id_of[departing], to_reviewer_ids=to or None)
    sure = close.checkbox("Close the study for good: no more ratings", key=f"close-sure-{sid}")
    if close.button("Close the study", key=f"close-{sid}", disabled=not sure):
        change_study(review.close_study, lambda r: (
            f"Closed '{study['name']}': {r['n_rated']} of {r['n_assignments']} assignments rated."), study_id=sid)


def adjudicated_caption(post: dict, number: int) -> str:
    """Run `number`'s acceptability after adjudication, as the Dashboard states it."""
    figures = post[("base", "finetuned")[number - 1]]
    low, high = figures["ci95"]["wilson"]
    return (f"After adjudication ({post['n_adjudicated']} of {post['n_disagreeing']} disagreeing cases "
            f"adjudicated): {figures['acceptable']} of {figures['n']} cases, {figures['share']:.1%} "
            f"(95% CI {low:.1%} to {high:.1%}, Wilson)")


def adjudicator_controls(study: dict, progress: list[dict], settled: dict) -> None:
    """The adjudication counts, and naming the adjudicator: anyone active who rates none of the study's cases
    (also once the study is closed: disagreements are usually settled then)."""
    sid, in_study = study["study_id"], {row["reviewer"] for row in progress}
    named = f"by {settled['adjudicator']}" if settled["adjudicator"] else "no adjudicator named yet"
    st.caption(f"Adjudication ({named}): {settled['disagreeing']} cases whose raters disagree on acceptability, "
               f"{settled['adjudicated']} adjudicated, {settled['waiting']} waiting.")
    who, go = st.columns(2)
    chosen = who.selectbox("Adjudicator", [r for r in active if active[r]["name"] not in in_study
                                           and active[r]["name"] != settled["adjudicator"]],
                           format_func=lambda r: active[r]["name"], index=None, key=f"adjudicator-{sid}-who",
                           help="Settles, blinded, the cases whose raters disagree; cannot be one of the raters.")
    if go.button("Name the adjudicator", key=f"adjudicator-{sid}-set", disabled=chosen is None):
        change_study(adjudication.set_adjudicator, lambda name: f"'{name}' adjudicates '{study['name']}'.",
                     study_id=sid, reviewer_id=chosen)


def practice_controls(study: dict, answered: dict) -> None:
    """The study's practice cases: how far each reviewer got, or the choice of practice runs for a study without."""
    sid = study["study_id"]
    if study["practice_run_1_id"] is not None:
        done = ", ".join(f"{active.get(r, {}).get('name', r)} {n} of {total}" for r, (n, total) in answered.items())
        st.caption(f"Practice cases from runs {study['practice_run_1_id']} and {study['practice_run_2_id']}, shown "
                   f"first and never counted; answered: {done or 'none yet'}.")
        return
    offered = [r["run_id"] for r in runs if r["part"] in practice.PRACTICE_PARTS]
    label_of = {r["run_id"]: r["label"] for r in runs}
    if not offered:
        st.caption("Practice cases: generate the two models' outputs over the validation part of the split (or "
                   "the train part, whose answers the fine-tuned model has learned) first.")
        return
    first, second, count, go = st.columns(4)
    chosen = (first.selectbox("Practice run for run 1", offered, format_func=label_of.get, index=None,
                              key=f"practice-{sid}-1"),
              second.selectbox("Practice run for run 2", offered, format_func=label_of.get, index=None,
                               key=f"practice-{sid}-2"))
    n = count.number_input("Practice cases", 1, 20, 3, key=f"practice-{sid}-n")
    if go.button("Add practice cases", key=f"practice-{sid}-add", disabled=None in chosen,
                 help="Every reviewer rates them first and then sees the reference answer; never counted."):
        change_study(practice.add_practice_cases, lambda cases: f"'{study['name']}' has {len(cases)} practice cases.",
                     study_id=sid, practice_runs=chosen, practice_n=int(n))


with tab_studies:
    notice = st.session_state.pop("admin-notice", None)
    if notice:
        st.success(notice)
    if pair is None:
        st.info("A study compares two generation runs over the same split part: "
                "make them on the Generate page.")
    else:
        run_ids, labels = [r["run_id"] for r in runs], {r["run_id"]: r["label"] for r in runs}
        with st.expander("Plan the study size before creating it"):
            st.caption("Cases needed to detect a difference in the share acceptable (or correct) between the "
                       "two runs, rated on the same cases, with the exact McNemar test.")
            left, middle, right = st.columns(3)
            plan_base = left.number_input("Expected share, run 1", 0.0, 1.0, 0.5, 0.05, key="plan-base")
            plan_ft = middle.number_input("Expected share, run 2", 0.0, 1.0, 0.7, 0.05, key="plan-finetuned")
            plan_k = right.number_input("Reviewers per case", 1, 15, 3, key="plan-overlap")
            plan_alpha = left.number_input("Alpha (two-sided)", 0.001, 0.5, 0.05, 0.01, key="plan-alpha")
            plan_power = middle.number_input("Power", 0.5, 0.99, 0.8, 0.05, key="plan-power")
            plan_disc = right.number_input("Share of cases the runs disagree on (0: assume independent)",
                                           0.0, 1.0, 0.0, 0.05, key="plan-discordant")
            try:
                plan = review.plan_study(plan_base, plan_ft, discordant=plan_disc or None, alpha=plan_alpha,
                                         power=plan_power, overlap=int(plan_k))
                st.metric("Cases needed", "more than 20,000" if plan["cases"] is None else f"{plan['cases']:,}",
                          help=plan["method"])
                if plan["ratings"] is not None:
                    st.caption(f"{plan['ratings']:,} ratings with {plan['ratings_per_case']} reviewers per case; "
                               f"power {plan['achieved_power']:.3f}; discordant share {plan['discordant']:.3f}"
                               + (" (assumed: independent outcomes)" if plan["discordant_assumed_independent"]
                                  else ""))
                for note in plan["notes"]:
                    st.info(note)
            except review.ReviewError as exc:
                st.warning(str(exc))
        with st.form("new-study"):
            st.subheader("New study")
            name = st.text_input("Name", help="Reviewers see the name: leave model names out of it.",
                                 key="study-name")
            left, right = st.columns(2)
            run_1 = left.selectbox("Run 1 (for example the base model)", run_ids, format_func=labels.get,
                                   index=run_ids.index(pair[0]))
            run_2 = right.selectbox("Run 2 (for example the fine-tuned model)", run_ids,
                                    format_func=labels.get, index=run_ids.index(pair[1]))
            task = left.selectbox("Task", TASKS, format_func=review.TASK_LABELS.get)
            reviewers = right.multiselect("Reviewers", list(active), format_func=lambda r: active[r]["name"])
            sample_n = left.number_input("Cases to sample (0: every case with both outputs)", min_value=0,
                                         step=1)
            seed = right.number_input("Seed of the sample and assignment (empty: a random one)", value=None,
                                      min_value=0, max_value=2**53 - 1, step=1,
                                      help="Stored with the study. Leave it empty unless you must reproduce "
                                           "a study: anyone who knows the seed and the case ids can tell "
                                           "which run each reviewer sees as A.")
            overlap = left.number_input("Reviewers per case", min_value=1, value=1, step=1)
            right.caption("Each output is rated Acceptable or Not acceptable; the form can also ask")
            edit_level = right.checkbox(
                "the edit level per output instead of yes/no", help=f"{', '.join(scales.EDIT.levels)}: "
                f"{scales.EDIT_RULE}, so the paper's yes/no figures stay comparable.")
            harm = right.checkbox("the potential harm if followed, and its likelihood",
                                  help=f"Harm: {', '.join(scales.HARM.levels)}; likelihood (asked only with some "
                                       f"harm): {', '.join(scales.LIKELIHOOD.levels)}.")
            likert = right.checkbox("a score from 1 to 5 per output")
            preference = right.checkbox("which of the two is preferred")
            comment = right.checkbox("a free-text comment", value=True)
            create = st.form_submit_button("Create study", type="primary")
        if create:
            try:
                with opened(DB) as conn:
                    study_id = review.create_study(
                        conn, actor_id=user["id"], name=name, run_1_id=run_1, run_2_id=run_2,
                        reviewer_ids=reviewers, task=task, sample_n=int(sample_n) or None,
                        seed=None if seed is None else int(seed),
                        overlap=int(overlap), form=review.Form(likert, preference, comment, edit_level, harm),
                        client=client)
                st.success(f"Created study '{' '.join(name.split())}' (id {study_id}).")
                for advice in review.creation_advice(len(reviewers), int(overlap)):
                    st.info(advice)
            except (review.ReviewError, auth.AuthError) as exc:
                st.error(str(exc))

    with opened(DB) as conn:
        studies = review.list_studies(conn, actor_id=user["id"])
        for study in studies:
            progress = review.study_progress(conn, study["study_id"], actor_id=user["id"])
            summary = review.study_summary(conn, study["study_id"], actor_id=user["id"])
            closed = " (closed)" if study["closed_at"] else ""
            with st.expander(f"{study['name']}: {study['n_done']} of {study['n_assignments']} ratings done{closed}",
                             expanded=study is studies[0]):
                sampled = " (sample)" if study["sample_n"] else ""
                st.caption(f"Task {study['task']}; runs {study['run_1_id']} and {study['run_2_id']}; "
                           f"{study['n_cases']} cases{sampled}; {study['overlap']} reviewers per case; "
                           f"seed {study['seed']}; created {study['created_at']}")
                metrics = st.columns(3)
                for column, number in zip(metrics, (1, 2)):
                    result = summary["runs"][number]
                    share, ci, verdicts = result["share_acceptable"], result["ci95_wilson"], result["share_of_verdicts"]
                    column.metric(f"Run {study[f'run_{number}_id']} acceptable (per case)",
                                  "–" if share is None else f"{share:.1%}",
                                  help=f"{result['acceptable']} of {result['rated']} cases with a verdict; "
                                       f"{summary['acceptability_rule']}")
                    if ci:
                        column.caption(f"95% CI {ci[0]:.1%} to {ci[1]:.1%} (Wilson); share of all verdicts "
                                       f"{verdicts:.1%} (secondary)")
                    if summary["post_adjudication"]:
                        column.caption(adjudicated_caption(summary["post_adjudication"], number))
                metrics[2].metric("Flagged unratable", summary["flagged"])
                for line in scales.summary_lines(summary["scales"], {1: "run 1", 2: "run 2"}):
                    st.caption(line)
                st.dataframe(pd.DataFrame(progress), hide_index=True)
                given_away, check = blinding.describe(
                    blinding.study_blinding(conn, study["study_id"], actor_id=user["id"]))
                (st.warning if given_away else st.caption)(check)
                adjudicator_controls(study, progress, adjudication.counts(conn, study["study_id"]))
                practice_controls(study, practice.practice_progress(conn, study["study_id"]))
                if study["closed_at"]:
                    st.info(f"Closed on {review.closed_on(study['closed_at'])} by "
                            f"{study['closed_by_name'] or 'the command line'}: it takes no more ratings.")
                else:
                    study_controls(study, progress)
    if not studies:
        st.caption("No studies yet.")

with tab_people:
    with st.form("add-person"):
        st.subheader("Add a person")
        left, right = st.columns(2)
        new_name = left.text_input("Name", key="person-name")
        role = right.selectbox("Role", auth.ROLES, index=auth.ROLES.index("reviewer"))
        add = st.form_submit_button("Add", type="primary")
    if add:
        try:
            with opened(DB) as conn:
                added, code = auth.add_user(conn, new_name, role, actor_id=user["id"], client=client)
            st.success(f"Added {added.role} '{added.name}'. Their access code is shown only now: "
                       "hand it over privately.")
            st.code(code, language=None)
        except auth.AuthError as exc:
            st.error(str(exc))

    st.subheader("People")
    with opened(DB) as conn:
        people = auth.list_users(conn)
    st.dataframe(pd.DataFrame(people), hide_index=True)
    if lockouts:
        st.subheader("Slowed sign-ins")
        st.caption("Failed sign-ins in a row slow the next attempt for that name, and for that address, "
                   "doubling each time: a forgotten code or someone guessing. A successful sign-in ends a "
                   "name's streak; failures older than 15 minutes are forgotten.")
        st.dataframe(pd.DataFrame(lockouts).rename(columns={
            "kind": "By", "who": "Name or address", "failures": "Failures in a row",
            "retry_after_s": "Next attempt in (s)", "last_attempt_at": "Last failure"}).drop(columns="key"),
            hide_index=True)
    names = [p["name"] for p in people]
    if names:
        chosen = st.selectbox("Person", names, key="admin-person")
        reset, off, on, end = st.columns(4)
        try:
            if reset.button("New access code", key="admin-reset"):
                with opened(DB) as conn:
                    code = auth.reset_code(conn, chosen, actor_id=user["id"], client=client)
                st.success(f"New access code for '{chosen}', shown only now; the old one no longer works.")
                st.code(code, language=None)
            if end.button("End sign-in sessions", key="admin-end-sessions",
                          help="Signs them out everywhere: open pages at their next click, and browsers that "
                               "remember the sign-in ask for the access code again."):
                with opened(DB) as conn:
                    ended = auth.end_sessions(conn, chosen, actor_id=user["id"], client=client)
                st.success(f"Ended {ended} sign-in session(s) of '{chosen}'.")
            for column, label, state in ((off, "Deactivate", False), (on, "Reactivate", True)):
                if column.button(label, key=f"admin-{label.lower()}"):
                    with opened(DB) as conn:
                        auth.set_active(conn, chosen, state, actor_id=user["id"], client=client)
                    st.rerun()
        except auth.AuthError as exc:
            st.error(str(exc))

with tab_audit:
    with opened(DB) as conn:
        entries = auth.audit_entries(conn, actor_id=user["id"])
    st.caption("The newest 500 entries: who did what, when and from where. Ratings are logged by value, "
               "never with case text or comments.")
    st.dataframe(pd.DataFrame(entries), hide_index=True)
