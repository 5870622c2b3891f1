"""Streamlit entry point: the navigation over pages/. Pages hold layout only; rocore does the work."""

import streamlit as st

from rocore.db import default_db_path

st.set_page_config(page_title="Radiation oncology LLM study", page_icon=":material/radiology:", layout="wide")

pages = [
    st.Page("pages/data.py", title="Data", icon=":material/table_view:", default=True),
]
st.sidebar.caption(f"Database: `{default_db_path()}`")
st.navigation(pages).run()
