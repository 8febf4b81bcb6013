"""sweeps stage of the MambaVL harness."""
