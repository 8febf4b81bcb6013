"""fusion stage of the MambaVL harness."""
