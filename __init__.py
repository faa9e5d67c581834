"""ckm-edge: cloud-edge channel knowledge map construction (one import name, `ckm_edge`).

The repository's top-level folders are this package's subpackages: ckm_edge.runtime (the
torch-free edge), ckm_edge.training, ckm_edge.export, ckm_edge.benchmarks, ckm_edge.protos.
"""
