"""Coach: derived tactical events per user (``coach.<user>``), never raw market data."""
