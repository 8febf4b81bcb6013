"""extract stage of the MambaVL harness."""
