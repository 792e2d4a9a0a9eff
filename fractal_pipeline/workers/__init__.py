"""Rendering many specs in worker processes: what a worker reports (results), and the pool that runs them."""
