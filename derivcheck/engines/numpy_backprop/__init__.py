"""The numpy engine: a from-scratch reverse mode for networks and hand-written field derivatives."""
