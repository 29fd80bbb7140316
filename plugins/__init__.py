"""First-party featurestore plugins, installed as the package ``featurestore_plugins``.

They register their transforms through the same hooks as third-party plugins do.
"""
