"""BIDS side of the app: discovery of inputs (pybids) and derivative outputs."""
