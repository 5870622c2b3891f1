"""Keyboard answers for the rating form: a reviewer rates a case without reaching for the mouse.

Streamlit gives buttons a `shortcut` (Submit: Ctrl+Enter, Alt+P / Alt+N: previous / next case) but
radios none. This components v2 component adds them in the page itself: inline JavaScript, no build
step, nothing fetched. Digits 1-9 (top row or keypad) choose that option of the outlined question,
the first one asked and not yet answered, in the order given; Backspace moves the outline back to
re-answer the question before. Keys typed in a text box stay there, and Esc leaves the box. The
radios are found by their label (the radiogroup's aria-label) and answered by clicking the option,
so the form's own widgets hold every answer and Submit stores them as if clicked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import streamlit as st

LEGEND = ("Keys: 1, 2, 3 … choose that option of the outlined question · Backspace goes back one question · "
          "Esc leaves a text box · Ctrl+Enter submits · Alt+N / Alt+P next / previous case")


@dataclass(frozen=True)
class Question:
    """A radio of the form, by its exact label. `only_if` = (label of another question, its option
    indexes counted from 0): the question is asked only once that one is answered with one of them,
    and the keys skip it otherwise."""

    label: str
    only_if: tuple[str, tuple[int, ...]] | None = None


# One state for the whole page on `window`: Streamlit calls the default export again with every new
# `data` without cleaning up the call before, so the keydown listener and the observer are installed
# once and only the latest call's cleanup (on unmount) removes them. The state outlives a remount,
# so a new case is still told from the one before.
JS = r"""
const MARK = "data-rating-keys-current";
const STYLE = `[${MARK}] { outline: 3px solid #ff4b4b; outline-offset: 6px; border-radius: 0.5rem; scroll-margin: 12px; }`;
const UNTYPED_INPUTS = ["radio", "checkbox", "button", "submit", "reset", "range", "color", "file"];

function group(label) {
  return [...document.querySelectorAll('[role="radiogroup"]')].find((g) => g.getAttribute("aria-label") === label);
}

function options(g) {
  return [...g.querySelectorAll('input[type="radio"]')];
}

function chosen(g) {
  return options(g).findIndex((option) => option.checked);
}

// The radiogroup of each question, null where the page does not show it or its condition is unmet.
function asked(questions) {
  return questions.map((q) => {
    const g = group(q.label);
    if (!g || !q.only_if) return g || null;
    const other = group(q.only_if[0]);
    return other && q.only_if[1].includes(chosen(other)) ? g : null;
  });
}

// The index of the outlined question; questions.length once every asked question is answered.
function current(state, groups) {
  if (state.back !== null && groups[state.back]) return state.back;
  const open = groups.findIndex((g) => g && chosen(g) < 0);
  return open >= 0 ? open : groups.length;
}

function scroller(element) {
  for (let e = element.parentElement; e; e = e.parentElement) {
    const overflow = getComputedStyle(e).overflowY;
    if ((overflow === "auto" || overflow === "scroll") && e.scrollHeight > e.clientHeight) return e;
  }
  return document.scrollingElement;
}

// Outline the question the next digit answers (Submit once all are answered). A new case is shown
// from the top: the reviewer reads the case first.
function refresh(state) {
  const groups = asked(state.questions);
  const first = groups.find((g) => g);
  if (!first) return;
  if (state.newCase) {
    state.newCase = false;
    scroller(first).scrollTop = 0;
  }
  const at = current(state, groups);
  const target = at < groups.length
    ? groups[at].closest('[data-testid="stRadio"]')
    : first.closest('[data-testid="stForm"]')?.querySelector('[data-testid="stFormSubmitButton"]');
  if (target === state.marked && target?.hasAttribute(MARK)) return;
  state.marked?.removeAttribute(MARK);
  state.marked = target;
  target?.setAttribute(MARK, "");
}

function typing(t) {
  return t instanceof HTMLElement && (t.isContentEditable || t.tagName === "TEXTAREA" || t.tagName === "SELECT"
    || (t.tagName === "INPUT" && !UNTYPED_INPUTS.includes(t.type)));
}

function onKey(event) {
  const state = window.__ratingKeys;
  if (typing(event.target)) {
    if (event.key === "Escape") event.target.blur();
    return;
  }
  if (event.ctrlKey || event.altKey || event.metaKey || event.repeat) return;
  const digit = /^(?:Digit|Numpad)([1-9])$/.exec(event.code);
  const groups = asked(state.questions);
  const at = current(state, groups);
  if (digit) {
    const option = at < groups.length ? options(groups[at])[Number(digit[1]) - 1] : undefined;
    if (!option) return;
    option.click();
    state.back = null;
  } else if (event.key === "Backspace") {
    const before = groups.slice(0, at).findLastIndex((g) => g);
    if (before < 0) return;
    state.back = before;
  } else {
    return;
  }
  event.preventDefault();
  refresh(state);
  state.marked?.scrollIntoView({ block: "nearest" });
}

function install(state) {
  state.style = document.createElement("style");
  state.style.textContent = STYLE;
  document.head.appendChild(state.style);
  state.onKey = onKey;
  document.addEventListener("keydown", onKey, true);
  let pending = false;
  state.observer = new MutationObserver(() => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; refresh(state); });
  });
  state.observer.observe(document.body, { subtree: true, childList: true, attributes: true,
                                          attributeFilter: ["data-selected", "aria-checked"] });
}

function uninstall(state) {
  document.removeEventListener("keydown", state.onKey, true);
  state.observer.disconnect();
  state.style.remove();
  state.marked?.removeAttribute(MARK);
  state.onKey = null;
}

export default function ({ data }) {
  const state = (window.__ratingKeys ??= { caseKey: null, back: null, marked: null, newCase: false });
  const token = {};
  state.token = token;
  state.questions = data.questions;
  if (state.caseKey !== data.case) {
    state.newCase = state.caseKey !== null;
    state.caseKey = data.case;
    state.back = null;
  }
  if (!state.onKey) install(state);
  refresh(state);
  return () => { if (state.token === token && state.onKey) uninstall(state); };
}
"""

_mount = st.components.v2.component("rating_keys", js=JS)


def rating_keys(questions: Sequence[Question | str], *, case: str) -> None:
    """The legend of the keys, and the keys themselves for `questions` (labels or `Question`s, in the
    order the digits answer them). A new `case` starts over at the top of the page. No widget key: the
    component keeps nothing in the session, whose state must hold no lists or dicts (the blinding scan
    of tests/test_page_review.py)."""
    st.caption(LEGEND)
    asked = [q if isinstance(q, Question) else Question(q) for q in questions]
    _mount(data={"case": case, "questions": [
        {"label": q.label, "only_if": q.only_if and [q.only_if[0], list(q.only_if[1])]} for q in asked]})
