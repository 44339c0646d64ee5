from .graph import LayerGraph, Node, build_graph

__all__ = ["LayerGraph", "Node", "build_graph"]
