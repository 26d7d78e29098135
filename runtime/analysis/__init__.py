"""Post-call analysis: rules of typed fields (and a summary) filled from a finished call's transcript."""
