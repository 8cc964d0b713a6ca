"""Decoding with a memory: the engine's named steps (prefill, prompt memory and the cut, decode step,
consolidation), the free-decoding loop, the Cognitive Monitor, the trigger rule, MemGen's delimiters,
stop strings and traces. Imports models/, memory/ and data/."""
