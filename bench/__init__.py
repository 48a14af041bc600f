"""`make bench`: end-to-end throughput of every action against the floor,
raw-publish and set-based baselines, on the local services (see run.py)."""
