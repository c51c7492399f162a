"""The Feast repo: entities, sources, feature views and services (Feast objects only)."""
