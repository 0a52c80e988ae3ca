"""The floor every layer stands on: one-line input errors, content hashes, where files live,
determinism and all-or-nothing cache writes. Imports nothing else from HUSAI."""
