"""features stage of the MambaVL harness."""
