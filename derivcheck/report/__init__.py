"""Output formats: terminal table and JSON (more formats arrive with ``derivcheck report``)."""
