"""Batch campaigns: the recipients' rows (`rows`), the engine that dials them (`engine`, `claims`), and what an
ended call means for its row (`outcomes`). The API is `runtime/api/routes/batch_calls.py`."""
