"""Sweep presets shipped with noisylm (TOML): `demo`, `paper-124m`, `paper-774m`."""
