"""Speech and language providers, cloud and local, behind one registry (`registry.py`)."""
