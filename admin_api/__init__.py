"""HTTP admin API (FastAPI): arrives with the change-request issue."""
