"""The torch engine: autograd (with create_graph for second derivatives) for networks and fields."""
