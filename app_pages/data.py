"""Data: import a case export, check and map its columns, store it; make and inspect splits."""

import pandas as pd
import streamlit as st

from app_pages.access import require_staff
from rocore.review import auth
from rocore.data import case_import, tables
from rocore.data import cases
from rocore.data import splits
from rocore.store.db import default_db_path, opened

DB = default_db_path()
user = require_staff()
UPDATE_LABEL = "Replace stored cases that have the same case id"
# The import's messages name this page's controls, not the command line's flags.
PAGE_OPTIONS = case_import.ImportOptions(map_column="choose its column in the '{field}' box under Columns",
                                         update=f"tick '{UPDATE_LABEL}'")

st.title("Cases")

with opened(DB) as conn:
    counts = cases.case_counts(conn)
total = int(counts["cases"].sum()) if len(counts) else 0
left, right = st.columns([1, 3])
left.metric("Stored cases", f"{total:,}")
if total:
    by_modality = counts.groupby("modality")["cases"].sum()
    right.bar_chart(by_modality, horizontal=True, height=180)
else:
    right.info("No cases yet: import a file below.")

tab_import, tab_splits, tab_browse = st.tabs(["Import", "Splits", "Browse"])

if "last-import" in st.session_state:
    name, result = st.session_state.pop("last-import")
    st.success(f"{name}: imported {result.n_inserted:,} new and {result.n_updated:,} updated cases "
               f"(import {result.import_id}).")
    if result.rejected:
        st.download_button(
            f"Download the {len(result.rejected)} rejected rows with reasons",
            case_import.rejected_rows_csv(result.rejected),
            file_name=f"{name}.rejected.csv", mime="text/csv", on_click="ignore",
        )

with tab_import:
    limits = tables.LIMITS
    upload = st.file_uploader(
        "Case file: CSV, TSV, Excel (.xlsx) or JSON lines, one case per row",
        type=["csv", "tsv", "txt", "tab", "xlsx", "jsonl", "ndjson", "json"],
        max_upload_size=limits.file_mb,
        help=f"At most {limits.file_mb} MB ({limits.unzipped_mb} MB unzipped for .xlsx), {limits.rows:,} rows "
             f"and {limits.columns} columns; {limits.cell_chars:,} characters a cell and "
             f"{limits.case_chars:,} a case.",
        # A new key after each import empties the uploader: the stored file would be checked again
        # and fail as "already stored".
        key=f"upload-{st.session_state.get('imports-done', 0)}",
    )
    if upload is not None:
        data = upload.getvalue()
        try:
            shown = tables.preview_table(data, upload.name)
        except tables.ImportRefused as exc:
            st.error("This file cannot be read.")
            st.code(tables.format_problems(exc.problems), language=None, wrap_lines=True)
            st.stop()
        st.caption(f"{shown.n_rows:,} rows, {len(shown.columns)} columns. First rows:")
        st.dataframe(pd.DataFrame(shown.first_rows, columns=shown.columns), hide_index=True, height=240)

        st.subheader("Columns")
        guess = case_import.guess_column_map(shown.columns)
        options = ["(none)", *shown.columns]
        mapping = {}
        grid = st.columns(4)
        for i, field in enumerate(case_import.FIELDS):
            required = field in case_import.REQUIRED_FIELDS
            choice = grid[i % 4].selectbox(
                f"{field}{' (required)' if required else ''}", options,
                index=options.index(guess[field]) if field in guess else 0,
                key=f"map-{field}-{upload.file_id}",
            )
            if choice != "(none)":
                mapping[field] = choice
        update = st.checkbox(UPDATE_LABEL, key="import-update")
        skip_invalid = st.checkbox("Skip invalid rows and import the rest", key="import-skip")

        st.subheader("Validation")
        with opened(DB) as conn:
            stored = case_import.stored_case_ids(conn)
        try:
            validation = case_import.validate(tables.TableReader(data, upload.name), mapping, stored, update,
                                              PAGE_OPTIONS)
        except tables.ImportRefused as exc:
            st.error("Map every required column before importing.")
            st.code(tables.format_problems(exc.problems), language=None, wrap_lines=True)
            st.stop()
        valid, invalid, warned = st.columns(3)
        valid.metric("Valid rows", validation.n_valid)
        invalid.metric("Rows with errors", len(validation.rejected))
        warned.metric("Warnings", len(validation.warnings))
        if validation.problems:
            st.code(tables.format_problems(validation.problems), language=None, wrap_lines=True)
        blocked = bool(validation.errors) and not skip_invalid
        if blocked:
            st.warning("Fix the errors above and upload the file again, or tick 'Skip invalid rows'. "
                       "Nothing is stored until the whole file is valid.")
        if st.button(f"Import {validation.n_valid:,} cases", type="primary",
                     disabled=blocked or not validation.n_valid, key="import-run"):
            try:
                with opened(DB) as conn:
                    result = case_import.import_cases(conn, data, upload.name, mapping, update=update,
                                                      skip_invalid=skip_invalid, actor=user.name,
                                                      client=auth.web_client(st.context.ip_address),
                                                      how=PAGE_OPTIONS)
            except tables.ImportRefused as exc:
                st.error("Nothing was imported; the database is unchanged.")
                st.code(tables.format_problems(exc.problems), language=None, wrap_lines=True)
            else:
                st.session_state["last-import"] = (upload.name, result)
                st.session_state["imports-done"] = st.session_state.get("imports-done", 0) + 1
                st.rerun()

with tab_splits:
    with st.form("new-split"):
        st.subheader("New split")
        name_col, seed_col = st.columns(2)
        with opened(DB) as conn:
            n_splits = len(splits.list_splits(conn))
        name = name_col.text_input("Name", value=f"split-{n_splits + 1}")
        seed = seed_col.number_input("Seed", value=0, step=1)
        shares = st.columns(3)
        fractions = {part: shares[i].number_input(part.capitalize(), 0.0, 1.0, default, 0.05)
                     for i, (part, default) in enumerate(splits.DEFAULT_FRACTIONS.items())}
        if st.form_submit_button("Create split"):
            try:
                with opened(DB) as conn:
                    split_id = splits.create_split(conn, name.strip(), int(seed), fractions, actor=user.name,
                                                    client=auth.web_client(st.context.ip_address))
                st.success(f"Created split '{name.strip()}' (id {split_id}).")
            except splits.SplitError as exc:
                st.error(str(exc))
    with opened(DB) as conn:
        stored_splits = splits.list_splits(conn)
        for split in stored_splits:
            table = pd.DataFrame([dict(r) for r in splits.split_counts(conn, split["split_id"])])
            leaks = splits.find_leaks(conn, split["split_id"])
            with st.expander(f"{split['name']}: {split['n_cases']:,} cases, seed {split['seed']}",
                             expanded=split is stored_splits[-1]):
                if len(table):
                    st.dataframe(table.pivot(index="modality", columns="part", values="n").fillna(0)
                                 .astype(int)[[p for p in splits.PARTS if p in set(table["part"])]])
                if leaks:
                    st.error(f"{len(leaks)} diagnosis texts appear in more than one part.")
                else:
                    st.success("No diagnosis text appears in two parts.")

with tab_browse:
    search = st.text_input("Search case id, ICD-10 code, site or diagnosis text")
    with opened(DB) as conn:
        st.dataframe(cases.list_cases(conn, search=search), hide_index=True)
        st.caption("Imports")
        st.dataframe(cases.list_imports(conn), hide_index=True)
