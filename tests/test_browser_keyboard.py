"""Rating with the keyboard alone in a real browser on a 1366x768 laptop screen, and how fast it goes.

A reviewer signs in (the only clicks) and rates six cases with digits, Backspace, Esc and Ctrl+Enter
(app_pages/rating_keys.py); the one comment is typed into a box focused without a click. The page
itself counts every key and click it receives; the test times each Submit until the next case's
heading shows, checks on every case that it is shown from the top with the patient, both regimens
and (for typical lengths) both first questions on the screen, the two questions level, and Submit on
the screen once the keys reach it, and then reads the ratings from the database. The figures are
printed (docs/benchmarks.md, "Rating speed in the browser").
"""

from __future__ import annotations

import statistics
import time

from live_app import BROWSER_TEST, page_shown_on_failure, settle, sign_in, streamlit_server
from playwright.sync_api import expect
from test_review_studies import base_answer, finetuned_answer, make_review_db

from rocore.evaluation import scales
from rocore.review.studies import Form
from rocore.store.db import opened

pytestmark = BROWSER_TEST

N_CASES, RATED, SCREEN = 7, 6, {"width": 1366, "height": 768}
LONG = "\n".join(f"Phase {i}: 50.4 Gy in 28 fractions of 1.8 Gy to the prostate and seminal vesicles, "
                 "IMRT with daily image guidance" for i in range(1, 9))
COMMENT = "12 fractions would do"  # digits typed in the comment box must stay there
# Counts, in the page, the keys (a chord such as Ctrl+Enter is one) and the clicks of a person:
# trusted events only, so the options the keys click for the reviewer do not count.
COUNTERS = """() => {
    window.counted = {keys: 0, clicks: 0};
    document.addEventListener("keydown", (e) => {
        if (e.isTrusted && !["Control", "Shift", "Alt", "Meta"].includes(e.key)) window.counted.keys++;
    }, true);
    document.addEventListener("pointerdown", (e) => { if (e.isTrusted) window.counted.clicks++; }, true);
}"""


def outputs(i: int) -> tuple[str, str]:
    """Typical one-line regimens, and two cases where one side runs to eight long lines."""
    return (f"Answer: {LONG if i in (2, 5) else base_answer(i)}", f"Answer: {finetuned_answer(i)}")


def answers_for(position: int) -> list[str]:
    """The digits for acceptable A, score A, acceptable B, score B and preference of a case."""
    return [str(1 + position % 2), str(1 + position % 5), str(1 + (position + 1) % 2), str(1 + (position + 2) % 5),
            str(1 + position % 3)]


def test_a_reviewer_rates_six_cases_with_the_keyboard_alone(db_path, tmp_path, browser):
    info = make_review_db(db_path, n_cases=N_CASES, reviewers=("ada",), overlap=1, raw_outputs=outputs)
    context = browser.new_context(viewport=SCREEN)
    page = context.new_page()
    with page_shown_on_failure(page), streamlit_server(db_path, tmp_path / "streamlit.log") as url:
        sign_in(page, url, "ada", info["codes"]["ada"])
        settle(page, f"Case 1 of {N_CASES}")
        page.evaluate(COUNTERS)
        keys, clicks, waits, submit_bottoms, long_cases = [], [], [], [], 0
        for position in range(1, RATED + 1):
            marked = page.locator("[data-rating-keys-current]")
            expect(marked).to_contain_text("Is Regimen A clinically acceptable?")
            long_case = page.get_by_text("Phase 8:").count() > 0
            submit_bottoms.append(check_layout(page, typical=not long_case))
            long_cases += long_case
            before = page.evaluate("({...window.counted})")
            press_answers(page, position)
            expect(marked).to_contain_text("Submit")
            assert within_screen(page.get_by_role("button", name="Submit").bounding_box())
            started = time.perf_counter()
            page.keyboard.press("Control+Enter")
            page.get_by_role("heading", name=f"Case {position + 1} of {N_CASES}").wait_for(timeout=30_000)
            waits.append(time.perf_counter() - started)
            page.get_by_text(f"Saved case {position}.").wait_for(timeout=30_000)
            after = page.evaluate("({...window.counted})")
            keys.append(after["keys"] - before["keys"])
            clicks.append(after["clicks"] - before["clicks"])
            settle(page, f"Case {position + 1} of {N_CASES}")
        page.get_by_text("Keys: 1, 2, 3").wait_for()
    context.close()

    print(f"keys per rated case: {keys} (the comment's {len(COMMENT)} characters and Esc in case 3)")
    print(f"clicks per rated case: {clicks}")
    print(f"Submit to next case shown: median {statistics.median(waits):.2f} s, max {max(waits):.2f} s "
          f"({', '.join(f'{w:.2f}' for w in waits)})")
    print(f"Submit's bottom edge before any scrolling: {', '.join(f'{y:.0f}' for y in submit_bottoms)} px "
          f"(screen {SCREEN['height']} px)")
    assert clicks == [0] * RATED
    assert keys == [6, 8, 6 + len(COMMENT) + 1, 6, 6, 6]
    assert long_cases, "no case with a long regimen among those rated"
    check_stored(db_path, info["ids"]["ada"])


def press_answers(page, position: int) -> None:
    """Answer the five questions of case `position` with digits; case 2 answers its first question
    wrongly and goes back with Backspace, case 3 writes a comment with digits in it before its preference."""
    digits = answers_for(position)
    if position == 2:
        page.keyboard.press("2" if digits[0] == "1" else "1")
        page.keyboard.press("Backspace")
    for number, digit in enumerate(digits):
        if position == 3 and number == 4:
            # Focused the way a Tab would, without a click: its keys must stay in the box until Esc.
            page.get_by_label("Comment (optional)").focus()
            page.keyboard.type(COMMENT)
            page.keyboard.press("Escape")
        page.keyboard.press(f"Numpad{digit}" if number == 1 else digit)


def within_screen(box: dict) -> bool:
    return box["y"] >= 0 and box["y"] + box["height"] <= SCREEN["height"]


def check_layout(page, typical: bool) -> float:
    """The case is shown from the top (the page's title on the screen): the patient and both regimens
    fit the screen, with both first questions where the regimens have typical lengths, and the two
    questions are level whatever the lengths; returns where Submit ends, unscrolled."""
    boxes = page.locator('[data-testid="stLayoutWrapper"] > [data-testid="stVerticalBlock"]')
    patient = boxes.filter(has=page.get_by_text("Site: prostate")).last.bounding_box()
    regimens = [boxes.filter(has=page.get_by_text(f"Regimen {side}", exact=True)).last.bounding_box()
                for side in "AB"]
    questions = [page.get_by_role("radiogroup", name=f"Is Regimen {side} clinically acceptable?").bounding_box()
                 for side in "AB"]
    title = page.get_by_role("heading", name="Review").bounding_box()
    shown = [title, patient, *regimens, *(questions if typical else [])]
    assert all(within_screen(box) for box in shown), (title, patient, regimens, questions)
    assert abs(questions[0]["y"] - questions[1]["y"]) < 2, questions
    box = page.get_by_role("button", name="Submit").bounding_box()
    return box["y"] + box["height"]


def check_stored(db_path, reviewer_id: int) -> None:
    """Exactly one rating per rated case, with the values the keys chose (option N of each question)."""
    with opened(db_path) as conn:
        rows = conn.execute(
            "SELECT a.position, r.revision, r.acceptable_a, r.acceptable_b, r.likert_a, r.likert_b, r.preference, "
            "r.comment FROM ratings r JOIN assignments a USING (assignment_id) WHERE a.reviewer_id = ? "
            "ORDER BY a.position", (reviewer_id,)).fetchall()
    expected = []
    for position in range(1, RATED + 1):
        a, likert_a, b, likert_b, preference = (int(d) for d in answers_for(position))
        expected.append((position, 1, int(a == 1), int(b == 1), likert_a, likert_b, ("A", "B", "none")[preference - 1],
                         COMMENT if position == 3 else None))
    assert [tuple(r) for r in rows] == expected


def test_the_keys_skip_the_likelihood_of_no_harm(db_path, tmp_path, browser):
    """With the edit-level and harm scales, the likelihood of harm is asked only after some harm: the
    keys pass over A's (no harm) and answer B's (mild or moderate harm)."""
    info = make_review_db(db_path, n_cases=2, reviewers=("ada",), overlap=1,
                          form=Form(edit_level=True, harm=True, comment=False))
    context = browser.new_context(viewport=SCREEN)
    page = context.new_page()
    marked = page.locator("[data-rating-keys-current]")
    with page_shown_on_failure(page), streamlit_server(db_path, tmp_path / "streamlit.log") as url:
        sign_in(page, url, "ada", info["codes"]["ada"])
        settle(page, "Case 1 of 2")
        question = {(scale, side): scale.question.format(output=f"Regimen {side}")
                    for scale in (scales.EDIT, scales.HARM, scales.LIKELIHOOD) for side in "AB"}
        expect(marked).to_contain_text(question[scales.EDIT, "A"])
        for digit, next_question in (("1", question[scales.HARM, "A"]), ("1", question[scales.EDIT, "B"]),
                                     ("3", question[scales.HARM, "B"]), ("2", question[scales.LIKELIHOOD, "B"])):
            page.keyboard.press(digit)
            expect(marked).to_contain_text(next_question)
        page.keyboard.press("3")
        expect(marked).to_contain_text("Submit")
        page.keyboard.press("Control+Enter")
        page.get_by_text("Saved case 1.").wait_for(timeout=30_000)
    context.close()
    with opened(db_path) as conn:
        rows = conn.execute("SELECT edit_a, harm_a, likelihood_a, edit_b, harm_b, likelihood_b, acceptable_a, "
                            "acceptable_b FROM ratings").fetchall()
    assert [tuple(r) for r in rows] == [(0, 0, None, 2, 1, 2, 1, 0)]


def test_practice_cases_then_study_cases_by_keyboard_alone_across_a_refresh(db_path, tmp_path, browser):
    """The reviewer's whole day: two practice cases (each answered, its reference read, Ctrl+Enter to go on),
    then study cases, a refresh in between that keeps them signed in; keys only after signing in."""
    from test_practice import PRACTICE_1, PRACTICE_2, add_practice_runs

    from rocore.review import practice

    info = make_review_db(db_path, n_cases=30, reviewers=("ada",), overlap=1)
    with opened(db_path) as conn:
        add_practice_runs(conn)
        practice.add_practice_cases(conn, actor_id=info["admin_id"], study_id=info["study_id"],
                                    practice_runs=(PRACTICE_1, PRACTICE_2), practice_n=2)
        total = conn.execute("SELECT count(*) FROM assignments").fetchone()[0]
    context = browser.new_context(viewport=SCREEN)
    page = context.new_page()

    def rate_by_keys(heading: str, number: int, then: str) -> None:
        """Answer the case under `heading` with digits and Ctrl+Enter, no click; wait for `then`."""
        settle(page, heading)
        page.evaluate(COUNTERS)
        expect(page.locator("[data-rating-keys-current]")).to_contain_text("Is Regimen A clinically acceptable?")
        for digit in answers_for(number):
            page.keyboard.press(digit)
        page.keyboard.press("Control+Enter")
        page.get_by_text(then).wait_for(timeout=30_000)
        assert page.evaluate("window.counted.clicks") == 0

    with page_shown_on_failure(page), streamlit_server(db_path, tmp_path / "streamlit.log") as url:
        sign_in(page, url, "ada", info["codes"]["ada"])
        for number in (1, 2):
            rate_by_keys(f"Practice case {number} of 2", number, "Reference regimen")
            page.get_by_role("button", name="Continue").wait_for(timeout=30_000)
            settle(page, f"Practice case {number} of 2")  # the run that shows the reference has ended
            page.keyboard.press("Control+Enter")  # Continue
        for position in (1, 2, 3):
            rate_by_keys(f"Case {position} of {total}", position, f"Saved case {position}.")
            if position == 2:
                settle(page, f"Case 3 of {total}")
                page.reload()  # signed in still: no sign-in form, the first unrated case
                expect(page.get_by_role("button", name="Sign in")).to_have_count(0)
    context.close()
    with opened(db_path) as conn:
        assert conn.execute("SELECT count(*) FROM practice_ratings").fetchone()[0] == 2
        assert tuple(conn.execute("SELECT count(*), count(DISTINCT assignment_id) FROM ratings").fetchone()) == (3, 3)
        actions = dict(conn.execute("SELECT action, count(*) FROM audit_log WHERE action IN ('sign-in', "
                                    "'resume-session') GROUP BY action").fetchall())
        assert actions == {"sign-in": 1, "resume-session": 1}, "one code entered; the refresh resumed"
