"""The finite-difference engine: Richardson central differences for networks and fields."""
