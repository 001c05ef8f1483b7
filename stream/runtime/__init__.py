"""The runtime layer: the worker's poll loop (worker), one partition's lifecycle and commit order (task), the
restore consumer (restore), the offline replay (replay) and the Faust-streaming runner (faust_app)."""
