"""Graph metrics of the thresholded functional-connectivity graph.

The graph: the Pearson FC with its diagonal zeroed, keeping only positive correlations among the
strongest ``DENSITY`` (20 %) of all ``n (n - 1) / 2`` ROI pairs (proportional thresholding, so
graphs of different scans have the same number of edges and metrics compare across scans; fewer
edges when fewer than 20 % of the pairs are positive). Edge weights are the correlations.

* global efficiency: mean over ordered ROI pairs of 1 / shortest weighted path length, with
  lengths 1 / w (Rubinov & Sporns, 2010). Computed with ``scipy.sparse.csgraph.shortest_path``
  (Floyd-Warshall: faster than Dijkstra on graphs this dense); equal to ``bct.efficiency_wei``
  (a test checks) and much faster;
* clustering: mean over ROIs of Onnela's weighted clustering coefficient (``bct.clustering_coef_wu``);
* modularity: Newman's weighted modularity of the Louvain partition (``networkx``
  ``louvain_communities(seed=0)``; bctpy's ``modularity_und`` fails under numpy 2). ``n_modules``
  counts communities of at least two ROIs: ROIs left without any edge are isolated, not modules;
* strength: per ROI the sum of its edge weights; ``hubs`` are the 3 strongest ROIs.
"""

from __future__ import annotations

import bct
import networkx as nx
import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import shortest_path

from fmrilm.corpus.descriptors._common import NO_NETWORKS, note
from fmrilm.corpus.descriptors.base import Context, Descriptor

FAMILY = "graph"
DENSITY = 0.2
N_HUBS = 3
_GRAPH = "FC graph: positive r, top 20 % density"


def threshold_proportional(fc: np.ndarray, density: float = DENSITY) -> np.ndarray:
    """Symmetric weight matrix keeping the strongest ``density`` of pairs with r > 0."""
    n = fc.shape[0]
    iu, ju = np.triu_indices(n, 1)
    w = fc[iu, ju]
    n_keep = int(round(density * w.size))
    keep = np.zeros(w.size, dtype=bool)
    if n_keep > 0:
        keep[np.argpartition(-w, n_keep - 1)[:n_keep]] = True
    keep &= w > 0
    W = np.zeros_like(fc, dtype=np.float64)
    W[iu[keep], ju[keep]] = w[keep]
    return W + W.T


def global_efficiency(W: np.ndarray) -> float:
    """Weighted global efficiency with lengths 1/w; equals ``bct.efficiency_wei(W)``."""
    n = W.shape[0]
    if n < 2:
        return 0.0
    lengths = np.divide(1.0, W, out=np.zeros_like(W, dtype=np.float64), where=W > 0)
    dist = shortest_path(csr_matrix(lengths), method="FW", directed=False)
    np.fill_diagonal(dist, np.inf)
    return float((1.0 / dist).sum() / (n * n - n))


def louvain_modules(W: np.ndarray) -> tuple[float, list[set[int]]]:
    """Modularity and communities of the Louvain partition of the weighted graph ``W``."""
    G = nx.Graph()
    G.add_nodes_from(range(W.shape[0]))
    iu, ju = np.nonzero(np.triu(W, 1))
    G.add_weighted_edges_from(zip(iu.tolist(), ju.tolist(), W[iu, ju].tolist(), strict=True))
    if G.number_of_edges() == 0:
        return 0.0, []
    communities = nx.community.louvain_communities(G, weight="weight", seed=0)
    return float(nx.community.modularity(G, communities, weight="weight")), communities


def compute(ctx: Context) -> list[Descriptor]:
    """Efficiency, clustering, modularity, strength and hubs of the thresholded FC graph."""
    fc = ctx.fc().copy()
    np.fill_diagonal(fc, 0.0)
    W = threshold_proportional(fc)
    strength = W.sum(axis=1)
    modularity, communities = louvain_modules(W)
    # stable order: strongest first, ties by ROI index
    hubs = np.lexsort((np.arange(W.shape[0]), -strength))[:N_HUBS]
    out = [
        Descriptor(
            "graph.global_efficiency",
            global_efficiency(W),
            "",
            FAMILY,
            f"weighted global efficiency, lengths 1/w ({_GRAPH}; scipy.sparse.csgraph shortest paths, "
            "= bct.efficiency_wei)",
        ),
        Descriptor(
            "graph.clustering",
            float(bct.clustering_coef_wu(W).mean()),
            "",
            FAMILY,
            f"mean Onnela weighted clustering coefficient ({_GRAPH}; bctpy clustering_coef_wu)",
        ),
        Descriptor(
            "graph.modularity",
            modularity,
            "",
            FAMILY,
            f"weighted modularity Q of the Louvain partition ({_GRAPH}; networkx, seed 0)",
        ),
        Descriptor(
            "graph.n_modules",
            int(sum(len(c) >= 2 for c in communities)),
            "",
            FAMILY,
            f"Louvain communities with at least 2 ROIs ({_GRAPH}; networkx, seed 0)",
        ),
        Descriptor(
            "graph.mean_strength",
            float(strength.mean()),
            "sum of r",
            FAMILY,
            f"mean over ROIs of the summed edge weights ({_GRAPH}; numpy)",
        ),
        Descriptor(
            "graph.hubs",
            [ctx.roi_names[i] for i in hubs],
            "",
            FAMILY,
            f"the {N_HUBS} ROIs with the highest strength ({_GRAPH}; numpy)",
        ),
    ]
    if ctx.network_index():
        out.append(
            Descriptor(
                "graph.hub_networks",
                [ctx.networks[i] or "unlabelled" for i in hubs],
                "",
                FAMILY,
                f"networks of the {N_HUBS} strongest ROIs ({_GRAPH}; atlas network labels)",
            )
        )
    else:
        out.append(note(FAMILY, NO_NETWORKS))
    return out
