"""The decision record: the ledger of decisions and outcomes, holdout assignment and
attribution. Serving writes it, training and the reports read it, so it sits below all three."""
