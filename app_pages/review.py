"""Review: rate two blinded outputs per case, side by side, one case at a time.

The page receives only what `rocore.review.studies.open_item` returns for the signed-in reviewer: the case,
the texts as "A" and "B", and the reviewer's own answers. It keeps the study id, the case position
and widget values in the session, never which run is which. Without a chosen position it opens the
first case without a rating, so a refresh, a new browser or a server restart resumes there.
Keyboard (a caption under the form lists the keys): digits 1-9 choose that option of the outlined
question, Backspace moves the outline back one question, Esc leaves a text box (whose keys stay in it),
Ctrl+Enter (Cmd+Enter on a Mac) submits, Alt+P and Alt+N go to the previous and next case
(`app_pages.rating_keys`).
Imported fields, model outputs and reviewers' own text are shown with `st.text`, never as Markdown:
an import must not be able to put links, remote images or LaTeX on a reviewer's screen.

A study's adjudicator gets an Adjudication section (`rocore.review.adjudication`): the cases whose raters
disagree, blinded as the rating form is, with only how many raters found each side acceptable. The
page pins the case it shows (its id stays in the session, never drawn) so that a submission lands on
the case its form showed.
"""

import streamlit as st

from app_pages.rating_keys import Question, rating_keys
from rocore.evaluation import scales
from rocore.review import adjudication, auth, practice
from rocore.review import studies as review
from rocore.store.db import default_db_path, opened

DB = default_db_path()
CHOICES = ("Acceptable", "Not acceptable")
# The regimen boxes: characters a line of st.text holds in half of a 1366-pixel screen, and the
# tallest box before its text scrolls inside it (the forms must stay within a laptop's screen).
LINE_CHARS, LINE_PX, MAX_BOX_PX = 70, 24, 240

user = st.session_state.get("user")
if not user:
    st.error("Sign in first.")
    st.stop()
client = auth.web_client(st.context.ip_address)

st.title("Review")
try:
    with opened(DB) as conn:
        studies = review.my_studies(conn, user["id"])
        adjudicating = adjudication.my_adjudications(conn, user["id"])
except auth.AccessDenied as exc:
    st.error(str(exc))
    st.stop()
if not studies and not adjudicating:
    st.info("No cases are assigned to you yet.")
    st.stop()


def show_patient(patient: dict) -> None:
    facts = [f"{field.capitalize() if field != 'ecog' else 'ECOG'}: {patient[field]}"
             for field in review.PATIENT_FIELDS if patient[field] not in (None, "")]
    with st.container(border=True):
        if facts:
            st.text(" · ".join(facts))
        st.text(patient["diagnosis"])


def adjudicate() -> None:
    """The adjudicator's queue, one case at a time: both outputs, the raters' counts per side, a verdict each."""
    by_id = {s["study_id"]: s for s in adjudicating}
    if st.session_state.get("adjudication-study") not in by_id:
        st.session_state["adjudication-study"] = next((s["study_id"] for s in adjudicating if s["waiting"]),
                                                      adjudicating[0]["study_id"])
    if len(adjudicating) > 1:
        st.selectbox("Study to adjudicate", list(by_id), key="adjudication-study",
                     format_func=lambda s: by_id[s]["name"])
    study_id = st.session_state["adjudication-study"]
    notice = st.session_state.pop("adjudication-notice", None)
    if notice:
        getattr(st, notice[0])(notice[1])
    try:
        with opened(DB) as conn:
            item = adjudication.open_adjudication(conn, user["id"], study_id,
                                                  st.session_state.get("adjudication-case"))
    except (auth.AccessDenied, review.ReviewError) as exc:
        st.session_state.pop("adjudication-case", None)
        st.error(str(exc))
        return
    if item is None:
        st.success(f"No case waits for adjudication: {by_id[study_id]['adjudicated']} of "
                   f"{by_id[study_id]['disagreeing']} cases whose raters disagree are adjudicated.")
        return
    st.session_state["adjudication-case"] = item.case_id
    st.subheader(f"Adjudication: {item.waiting} of {item.disagreeing} cases waiting")
    st.caption("The raters of this case disagree on acceptability. Give your own verdict on each output.")
    show_patient(item.patient)
    form = st.session_state.setdefault("adjudication-form", 0)
    with st.form(f"adjudicate-{form}", border=False):
        answers = {}
        for (column, side), raters in zip(output_columns(item.label, item.text_a, item.text_b),
                                          (item.raters_a, item.raters_b)):
            with column:
                st.caption(f"{raters} found {item.label} {side.upper()} acceptable")
                accepted = getattr(item, f"acceptable_{side}")
                answers[side] = st.radio(f"Is {item.label} {side.upper()} clinically acceptable?", CHOICES,
                                         horizontal=True, key=f"adjudicate-{side}-{form}",
                                         index=None if accepted is None else int(not accepted))
        comment = st.text_area("Comment (optional)", value=item.comment or "", max_chars=review.MAX_COMMENT,
                               key=f"adjudicate-comment-{form}")
        submitted = st.form_submit_button("Submit verdict", type="primary", key=f"adjudicate-submit-{form}")
    if submitted:
        choice = {"Acceptable": True, "Not acceptable": False}
        try:
            with opened(DB) as conn:
                adjudication.submit_adjudication(conn, user["id"], study_id, item.case_id, choice.get(answers["a"]),
                                                 choice.get(answers["b"]), comment, item.revision, client)
        except (review.ReviewError, auth.AccessDenied) as exc:
            st.session_state["adjudication-notice"] = ("error", str(exc))
        else:
            st.session_state["adjudication-notice"] = ("success", "Verdict stored.")
            st.session_state.pop("adjudication-case", None)
            st.session_state["adjudication-form"] = form + 1
        st.rerun()


def output_columns(label: str, text_a: str, text_b: str) -> list:
    """The two outputs side by side, each in a box of one shared height; (column, side) for what goes below
    each."""
    columns = st.columns(2)
    height = box_height(text_a, text_b)
    for column, side, text in zip(columns, "ab", (text_a, text_b)):
        with column, st.container(border=True, height=height):
            st.markdown(f"**{label} {side.upper()}**")
            st.text(text)
    return list(zip(columns, "ab"))


def box_height(*texts: str) -> int:
    """One height for both regimen boxes, from the longer text, so that the two forms below them start
    level whatever the lengths."""
    lines = max(sum(1 + len(line) // LINE_CHARS for line in text.splitlines() or [""]) for text in texts)
    return min(56 + LINE_PX * lines, MAX_BOX_PX)


def index_of(options, value):
    """The radio index of a stored answer, None (nothing chosen) without one."""
    return options.index(value) if value in options else None


def rating_form(label: str, text_a: str, text_b: str, asked: review.Form, current: review.Rating,
                key: str) -> tuple[dict, bool]:
    """The rating form of a case, both outputs side by side with the study's scales under each, and the
    keys that answer it (app_pages.rating_keys); (answers as Rating fields, submitted)."""
    answers: dict = {}
    questions: list[Question] = []

    def ask(scale: scales.Scale, side: str, only_if: tuple[str, tuple[int, ...]] | None = None) -> str:
        question = scale.question.format(output=f"{label} {side.upper()}")
        answers[f"{scale.key}_{side}"] = st.radio(
            question, scale.values, format_func=scale.label, horizontal=True, key=f"{scale.key}-{side}-{key}",
            index=index_of(scale.values, getattr(current, f"{scale.key}_{side}")))
        questions.append(Question(question, only_if))
        return question

    with st.form(f"rate-{key}", border=False):
        for column, side in output_columns(label, text_a, text_b):
            with column:
                if asked.edit_level:
                    ask(scales.EDIT, side)
                else:
                    question = f"Is {label} {side.upper()} clinically acceptable?"
                    accepted = getattr(current, f"acceptable_{side}")
                    answers[f"acceptable_{side}"] = st.radio(
                        question, CHOICES, horizontal=True, key=f"acceptable-{side}-{key}",
                        index=None if accepted is None else int(not accepted))
                    questions.append(Question(question))
                if asked.harm:
                    harm = ask(scales.HARM, side)
                    ask(scales.LIKELIHOOD, side, only_if=(harm, tuple(
                        i for i, value in enumerate(scales.HARM.values) if value != scales.NO_HARM)))
                if asked.likert:
                    ask(scales.LIKERT, side)
        if asked.preference:
            names = {"A": f"{label} A", "B": f"{label} B", "none": "No preference"}
            answers["preference"] = st.radio(
                "Which do you prefer?", review.PREFERENCES, format_func=names.get, horizontal=True,
                index=index_of(review.PREFERENCES, current.preference), key=f"preference-{key}")
            questions.append(Question("Which do you prefer?"))
        if asked.comment:
            answers["comment"] = st.text_area("Comment (optional)", value=current.comment or "",
                                              max_chars=review.MAX_COMMENT, key=f"comment-{key}")
        submitted = st.form_submit_button("Submit", type="primary", shortcut="Ctrl+Enter", key=f"submit-{key}",
                                          help="Store this rating and show the next case (Ctrl+Enter)")
    rating_keys(questions, case=key)
    choice = {"Acceptable": True, "Not acceptable": False}
    for side in "ab":
        if f"acceptable_{side}" in answers:
            answers[f"acceptable_{side}"] = choice.get(answers[f"acceptable_{side}"])
    return answers, submitted


if adjudicating:
    work = st.radio("Work", ("Rate cases", "Adjudicate"), horizontal=True, key="review-work") if studies else None
    if work != "Rate cases":
        adjudicate()
        st.stop()


def go_to(position: int | None) -> None:
    """Show the case at `position` next (None: the first unrated), with a fresh form."""
    st.session_state["review-position"] = position
    st.session_state.pop("review-assignment", None)
    st.session_state.pop("review-revision", None)


by_id = {s["study_id"]: s for s in studies}
if st.session_state.get("review-study") not in by_id:
    st.session_state["review-study"] = next((s["study_id"] for s in studies
                                             if s["done"] < s["total"] and not s["closed_at"]), studies[0]["study_id"])
if len(studies) > 1:
    # The study's name only: a keyed select box keeps the label its choice had when first drawn, so a
    # count in it would go stale. The progress bar below counts the ratings.
    st.selectbox("Study", list(by_id), key="review-study", on_change=go_to, args=(None,),
                 format_func=lambda s: by_id[s]["name"])
study_id = st.session_state["review-study"]

notice = st.session_state.pop("review-notice", None)
if notice:
    getattr(st, notice[0])(notice[1])


def my_counts() -> None:
    """The reviewer's own counts in the study, once it is done or closed."""
    with opened(DB) as conn:
        mine = review.my_summary(conn, user["id"], study_id)
    rated, flagged, revised, commented = st.columns(4)
    rated.metric("Rated", mine["rated"])
    flagged.metric("Flagged as unratable", mine["flagged"])
    revised.metric("Revised after a first rating", mine["revised"])
    commented.metric("With a comment", mine["commented"])


closed_at = by_id[study_id]["closed_at"]
if closed_at:
    st.info(f"This study was closed on {review.closed_on(closed_at)}: it takes no more ratings. Thank you!")
    my_counts()
    st.stop()


def answers_text(rating: review.Rating, label: str) -> str:
    """The reviewer's own answers in words, for the practice reveal."""
    parts = []
    for side in "ab":
        words = [f"{scale.name.lower()}: {scale.label(getattr(rating, f'{scale.key}_{side}')).lower()}"
                 for scale in scales.SCALES.values() if getattr(rating, f"{scale.key}_{side}") is not None]
        verdict = "acceptable" if getattr(rating, f"acceptable_{side}") else "not acceptable"
        parts.append(f"{label} {side.upper()}: {', '.join([verdict, *words])}")
    if rating.preference:
        parts.append(f"preferred: {rating.preference if rating.preference != 'none' else 'neither'}")
    return "\n".join(parts)


def practise(trial: practice.PracticeItem) -> None:
    """One practice case: the rating form, then the reviewer's answers beside the reference answer."""
    st.subheader(f"Practice case {trial.position} of {trial.total}")
    st.info("Practice: your answers here are stored but never counted in any result. Once you submit, the "
            "reference answer from the case record is shown, to calibrate before the study's own cases.")
    show_patient(trial.patient)
    if trial.rating is None:
        answers, submitted = rating_form(trial.label, trial.text_a, trial.text_b, trial.form, review.Rating(),
                                         f"practice-{trial.practice_id}")
        if submitted:
            try:
                with opened(DB) as conn:
                    practice.submit_practice(conn, user["id"], trial.practice_id, review.Rating(**answers), client)
            except (review.ReviewError, auth.AccessDenied) as exc:
                st.error(str(exc))
            else:
                st.session_state["practice-shown"] = (study_id, trial.practice_id)
                st.rerun()
        return
    output_columns(trial.label, trial.text_a, trial.text_b)
    st.markdown("**Your answers**")
    st.text(answers_text(trial.rating, trial.label))
    st.markdown(f"**Reference {trial.label.lower()}** (from the case record)")
    with st.container(border=True):
        st.text(trial.reference)
    if st.button("Continue", type="primary", shortcut="Ctrl+Enter", key=f"practice-continue-{trial.practice_id}",
                 help="Go on to the next case (Ctrl+Enter)"):
        st.session_state.pop("practice-shown", None)
        st.rerun()


with opened(DB) as conn:
    shown_study, shown_practice = st.session_state.get("practice-shown", (None, None))
    trial = practice.open_practice(conn, user["id"], study_id, shown_practice if shown_study == study_id else None)
if trial is not None:
    practise(trial)
    st.stop()

shown = (st.session_state.get("review-assignment"), st.session_state.get("review-revision"))
try:
    with opened(DB) as conn:
        item = review.open_item(conn, user["id"], study_id, st.session_state.get("review-position"),
                                shown if None not in shown else None)
except auth.AccessDenied as exc:
    st.error(str(exc))
    st.stop()

if item is None:
    total = by_id[study_id]["total"]
    st.progress(1.0, text=f"{total} of {total} rated")
    st.success(f"You have rated all {total} cases of this study. Thank you!")
    my_counts()
    st.button("Look through my ratings", on_click=go_to, args=(1,), key="review-again")
    st.stop()

# Pin the case and the revision its form shows: the next run reads a submission against this very
# form, even if another tab rated the case meanwhile (rocore then refuses it as stale).
st.session_state["review-position"] = item.position
st.session_state["review-assignment"], st.session_state["review-revision"] = item.assignment_id, item.revision
st.progress(item.done / item.total, text=f"{item.done} of {item.total} rated")
st.subheader(f"Case {item.position} of {item.total}")

show_patient(item.patient)

current = item.current or review.Rating()
if current.unratable:
    st.warning("You flagged this case as unratable.")
    st.text(f"Your reason: {current.unratable_reason}")
elif item.revision:
    st.caption(f"You rated this case before (revision {item.revision}). Submitting again adds a revision; "
               "the earlier rating is kept.")

key = f"{item.assignment_id}-{item.revision}"


answers, submitted = rating_form(item.label, item.text_a, item.text_b, item.form, current, key)

with st.expander("This case cannot be rated"), st.form(f"flag-{key}", border=False):
    reason = st.text_input("Reason", max_chars=review.MAX_REASON, key=f"reason-{key}",
                           placeholder="for example: the diagnosis is incomplete")
    flagged = st.form_submit_button("Flag as unratable", key=f"flag-button-{key}")

back, forward, first_open = st.columns(3)
back.button("Previous case", on_click=go_to, args=(item.position - 1,), disabled=item.position == 1,
            shortcut="Alt+P", key="review-previous", width="stretch")
forward.button("Next case", on_click=go_to, args=(item.position + 1,), disabled=item.position == item.total,
               shortcut="Alt+N", key="review-next", width="stretch")
first_open.button("First unrated case", on_click=go_to, args=(None,), key="review-first-open",
                  width="stretch")


def save(rating: review.Rating) -> None:
    """Store the rating and move on to the first unrated case; a refusal (also by the store: locked,
    read-only, full) stays on this case, whose widgets keep the reviewer's answers for a retry."""
    try:
        saved = review.save_rating(DB, user["id"], item.assignment_id, rating, item.revision, client)
    except review.StaleRating as exc:
        st.session_state["review-notice"] = ("warning", str(exc))
        go_to(item.position)
    except (review.ReviewError, auth.AccessDenied) as exc:
        st.session_state["review-notice"] = ("error", str(exc))
    else:
        # "Kept" only when the answers equal what the form showed. A duplicate of a newer revision is
        # this form's own answer stored by a first submission (Ctrl+Enter in the comment box submits
        # twice; a rerun can cut the first one short after it stored), so it reads as that one did.
        kept = saved.duplicate and saved.revision <= item.revision
        what = ("Kept" if kept else "Flagged" if rating.unratable else "Saved" if saved.revision == 1 else "Revised")
        st.session_state["review-notice"] = ("success", f"{what} case {item.position}.")
        go_to(None)
    st.rerun()


if submitted:
    save(review.Rating(**answers))
if flagged:
    save(review.Rating(unratable_reason=reason))
