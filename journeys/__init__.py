"""Journeys: always-on, triggered, multi-step dialogs across channels (definition, state, steps)."""
