"""Package data: the trainer's YAML configs and the class list, installed as `ms_impl.configs` (see setup.cfg)."""
