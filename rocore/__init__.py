"""rocore: the library behind the app, the CLI (`python -m rocore`) and `python -m train`.

Its subpackages are the stages of the study, in the order data flows through them; a stage may
import only the stages before it (tests/test_architecture.py checks this and that no import circle
exists):

    store -> data -> model -> training -> generation -> evaluation -> review -> demo

`cli` sits above all of them. No module of rocore imports Streamlit.
"""
