"""reports stage of the MambaVL harness."""
