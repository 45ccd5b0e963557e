#!/usr/bin/env python3
"""Reference partitions and modularities for canon-rag's Leiden tests, from networkx.

Writes goldens/rag/leiden_reference.json: for each graph its weighted edge list, networkx's
Louvain partition (seed 0) with networkx's modularity of it, and, for planted graphs, the planted
groups with their modularity.

  ~/.cache/canon-peers/venv/bin/python scripts/leiden_reference.py > goldens/rag/leiden_reference.json
"""
import json

import networkx as nx
from networkx.algorithms import community as nxc


def entry(name, g, planted=None):
    g = nx.convert_node_labels_to_integers(g)
    edges = [[u, v, float(d.get("weight", 1.0))] for u, v, d in g.edges(data=True)]
    louv = nxc.louvain_communities(g, weight="weight", seed=0)
    out = {
        "name": name,
        "nodes": g.number_of_nodes(),
        "edges": edges,
        "louvain": [sorted(c) for c in louv],
        "louvain_modularity": nxc.modularity(g, louv, weight="weight"),
        "networkx": nx.__version__,
    }
    if planted is not None:
        out["planted"] = [sorted(c) for c in planted]
        out["planted_modularity"] = nxc.modularity(g, planted, weight="weight")
    return out


graphs = [
    entry("karate", nx.karate_club_graph()),
    entry("les_miserables", nx.les_miserables_graph()),
]
pp = nx.planted_partition_graph(6, 12, 0.7, 0.02, seed=1)
graphs.append(entry("planted_6x12", pp, planted=[set(range(i * 12, (i + 1) * 12)) for i in range(6)]))
print(json.dumps({"graphs": graphs}))
