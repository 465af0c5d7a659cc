"""Model-adapter tests: one file per adapter module, each class inheriting ``contract.AdapterContract``."""
