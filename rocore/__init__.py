"""rocore: the library behind the app and the CLI. No Streamlit import anywhere in it."""
