"""The state layer: what one partition owns (tables), its compacted changelog records (changelog) and its
local checkpoints on disk (checkpoint)."""
