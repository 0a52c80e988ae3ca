"""The floor every layer stands on: one-line input errors (`errors`), content hashes
(`hashing`), where files live (`paths`), determinism (`repro`), all-or-nothing cache writes
(`cache`), the process's device (`device`) and memory handed back between phases (`memory`).
Imports nothing else from HUSAI.
"""
